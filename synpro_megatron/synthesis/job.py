"""The synthesis job: this rank's share of the batches (resumable), then, on rank 0, finalize.

Outputs (see synpro_megatron.rundir for the paths):
  synthetic/round_K/KIND.bin, KIND.idx      Megatron IndexedDataset, one document (+EOD) per kept output
  synthetic/round_K/KIND.provenance.jsonl   synthetic doc index -> source doc id/index and its rewards
  synthetic/round_K/KIND.dropped.jsonl      sources whose rewrite failed the faithfulness gate, and why
  synthetic/manifest.json                   per round/kind: counts, tokens, sha256 of the .bin, settings

The work is cut into fixed batches of source documents (batch b belongs to rank b % world); each
finished batch goes to the rank's journal (journal.py). While batch b is scored (gate, quality,
journal) on a second thread, batch b+1 is generating. The dataset is built from the journals only
at the end (by rank 0, once every rank has left its done marker), streamed record by record with
a pool of tokenizing processes, under temporary names, then renamed; the manifest is updated last.

Data parallel: one process per GPU, each with its own engine; rank and world are given
explicitly (the loop does) or come from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Optional

from synpro_megatron.fsutil import atomic_jsonl_writer, atomic_write_json, read_jsonl_at
from synpro_megatron.generators.prompts import check_kind
from synpro_megatron.rundir import RunDir
from synpro_megatron.synthesis.config import SynthesisConfig
from synpro_megatron.synthesis.journal import append_journal, done_ids, iter_journal, journal_files, journal_path, repair_journal
from synpro_megatron.synthesis.rewrite import generate_batch, score_batch
from synpro_megatron.synthesis.sources import SourceDoc, load_losses, load_pool, organic_pool, select_documents


def work_dir(cfg: SynthesisConfig) -> Path:
    return Path(RunDir(cfg.run_dir).synthesis_work_dir(cfg.round, cfg.kind))


def rank_and_world(cfg: SynthesisConfig) -> tuple[int, int]:
    env = os.environ
    world = cfg.world_size or int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
    rank = cfg.rank if cfg.rank is not None else int(env.get("RANK") or env.get("SLURM_PROCID") or 0)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return rank, world


GPU_BATCH_SIZE, CPU_BATCH_SIZE = 1024, 16


def default_batch_size(cfg: SynthesisConfig) -> int:
    """Documents per generation call: large on a GPU vLLM engine (its scheduler keeps the GPU full
    with thousands of prompts), small elsewhere (a journal batch is also the unit lost on a crash)."""
    from synpro_megatron.generators.backends import vllm_available

    gpu_vllm = cfg.backend in ("auto", "vllm") and vllm_available() and not os.environ.get("SYNPRO_VLLM_PYTHON")
    return GPU_BATCH_SIZE if gpu_vllm else CPU_BATCH_SIZE


def default_generator(cfg: SynthesisConfig) -> Optional[str]:
    """The generator `synpro train-generator --run-dir ROOT --round K` trained for this kind, when
    there is one; None (the offline SmolLM2) otherwise."""
    trained = RunDir(cfg.run_dir).generator_dir(cfg.round, cfg.kind)
    return trained if os.path.isdir(trained) and os.listdir(trained) else None


def _fingerprint(cfg: SynthesisConfig, generator: str, source: str, selected: list[SourceDoc]) -> dict:
    ids_digest = hashlib.sha256("\n".join(d.doc_id for d in selected).encode()).hexdigest()
    fingerprint = {"kind": cfg.kind, "round": cfg.round, "generator": generator, "source": os.path.abspath(source),
                   "select": cfg.select, "limit": cfg.limit, "documents": len(selected), "ids_sha256": ids_digest,
                   "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "candidates": cfg.candidates, "seed": cfg.seed,
                   "repetition_penalty": cfg.repetition_penalty, "few_shot": cfg.few_shot,
                   "ban_example_words": cfg.ban_example_words, "prefill": cfg.prefill,
                   "anchor_first_entry": cfg.anchor_first_entry,
                   "clean": cfg.clean, "filter_entries": cfg.filter_entries, "max_source_tokens": cfg.max_source_tokens,
                   "align_threshold": cfg.faithfulness.align_threshold,
                   # every gate setting except the judge (a callable): a change means different outputs
                   "faithfulness": {k: v for k, v in dataclasses.asdict(cfg.faithfulness).items() if k != "judge"}}
    return json.loads(json.dumps(fingerprint))  # as job.json stores it (tuples become lists)


def _generator_name(cfg: SynthesisConfig, backend) -> str:
    if backend is not None:
        return str(getattr(backend, "path", type(backend).__name__))
    from synpro_megatron.generators.backends import resolve_generator_path

    return resolve_generator_path(cfg.generator)


def trained_with_few_shot(generator: str) -> bool:
    """Whether `synpro train-generator` trained this generator on few-shot prompts (its
    synpro_generator.json says so); a generator is best used with the prompts it was trained on."""
    meta = Path(generator) / "synpro_generator.json"
    if not meta.exists():
        return False
    try:
        return bool(json.loads(meta.read_text(encoding="utf-8")).get("config", {}).get("few_shot", False))
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{meta}: unreadable generator metadata ({e})") from None


def _pin_local_gpu(cfg: SynthesisConfig, world: int) -> None:
    # One vLLM engine per rank: show each rank only its own GPU (before anything touches CUDA).
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID")
    if int(os.environ.get("SYNPRO_VLLM_TP") or 1) > 1:
        return  # a tensor-parallel engine spans the GPUs srun --gpus-per-task gave this rank
    if world > 1 and local is not None and cfg.backend in ("auto", "vllm"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else None
        if devices is None or len(devices) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local)] if devices else str(local)


def _tensorboard(cfg: SynthesisConfig, rank: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a declared dependency
        return None
    return SummaryWriter(RunDir(cfg.run_dir).tensorboard(f"synthesize-round_{cfg.round}-{cfg.kind}-rank{rank}"))


def run_synthesis(cfg: SynthesisConfig, backend=None) -> dict:
    """Run (or resume) this rank's share, then, on rank 0, build the round's dataset.
    Returns the manifest entry (rank 0) or this rank's summary. `backend`: a ready generator
    backend (default: built from cfg.backend and cfg.generator)."""
    check_kind(cfg.kind)
    if cfg.batch_size is None:
        cfg = dataclasses.replace(cfg, batch_size=default_batch_size(cfg))
    if cfg.batch_size < 1 or cfg.candidates < 1:
        raise ValueError("batch_size and candidates must be >= 1")
    rank, world = rank_and_world(cfg)
    _pin_local_gpu(cfg, world)
    if cfg.generator is None and backend is None:
        cfg = dataclasses.replace(cfg, generator=default_generator(cfg))
    sources = organic_pool(cfg.run_dir, cfg.organic, cfg.source_jsonl)
    source = sources.path
    pool = load_pool(sources)
    losses = load_losses(cfg.doc_losses, pool) if cfg.doc_losses else None
    if cfg.limit is not None:
        pool, losses = pool[:cfg.limit], (losses[:cfg.limit] if losses is not None else None)
    selected = select_documents(pool, cfg.select, losses, run_dir=cfg.run_dir)
    generator = _generator_name(cfg, backend)
    if cfg.few_shot is None:
        cfg = dataclasses.replace(cfg, few_shot=trained_with_few_shot(generator))
    from synpro_megatron.generators.backends import SamplingConfig

    sampling = SamplingConfig.of_generator(generator).override(
        temperature=cfg.temperature, top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty)
    cfg = dataclasses.replace(cfg, **dataclasses.asdict(sampling))
    fingerprint = _fingerprint(cfg, generator, source, selected)

    wdir = work_dir(cfg)
    job_file = wdir / "job.json"
    if cfg.restart and wdir.exists() and rank == 0:
        shutil.rmtree(wdir)
    wdir.mkdir(parents=True, exist_ok=True)
    with open(wdir / ".job.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if job_file.exists():
            previous = json.loads(job_file.read_text(encoding="utf-8"))
            if previous != fingerprint:
                changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
                raise ValueError(
                    f"{wdir} holds a journal from a different synthesis job (changed: {', '.join(changed)}); "
                    "rerun with the same settings to resume, or pass --restart to start over"
                )
        else:
            atomic_write_json(str(job_file), fingerprint, indent=1)

    batches = [selected[i:i + cfg.batch_size] for i in range(0, len(selected), cfg.batch_size)]
    mine = [(b, docs) for b, docs in enumerate(batches) if b % world == rank]
    journal = journal_path(wdir, rank)
    repair_journal(journal)
    done = done_ids(wdir)
    pending = [(b, [d for d in docs if d.doc_id not in done]) for b, docs in mine]
    pending = [(b, docs) for b, docs in pending if docs]

    written = 0
    if pending:
        from synpro_megatron.progress import progress

        if backend is None:
            from synpro_megatron.generators.backends import make_backend

            backend = make_backend(cfg.backend, cfg.generator)
        writer = _tensorboard(cfg, rank)
        total_docs = sum(len(d) for _, d in mine)
        bar = progress(total=total_docs, initial=total_docs - sum(len(d) for _, d in pending), unit="doc",
                       desc=f"synthesize {cfg.kind} r{cfg.round} rank {rank}", file=sys.stderr, disable=None)
        kept_total = 0

        def journaled(records: list[dict]) -> None:
            nonlocal written, kept_total
            written += len(records)
            kept_total += sum(r["kept"] for r in records)
            bar.update(len(records))
            if writer is not None:
                step = bar.n
                writer.add_scalar("synthesis/kept_fraction", kept_total / max(1, written), step)
                secs = records[0].get("generation_seconds") or 0
                if secs:
                    writer.add_scalar("synthesis/generated_tokens_per_s",
                                      records[0].get("generated_tokens", 0) / secs, step)
                span = records[0].get("timeline", {}).get("score")
                if span:
                    writer.add_scalar("synthesis/scoring_seconds", span[1] - span[0], step)

        try:
            _generate_and_score(backend, pending, cfg, journal, journaled)
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    my_ids = [d.doc_id for _, docs in mine for d in docs]
    atomic_write_json(str(wdir / f"done.rank{rank}.json"), {"rank": rank, "world": world, "documents": len(my_ids)})
    summary = {"rank": rank, "world": world, "written_now": written, "assigned": len(my_ids)}
    if rank != 0:
        return summary
    _wait_for_ranks(wdir, world, cfg.wait_timeout_s)
    return finalize(cfg, selected, fingerprint)


def _generate_and_score(backend, pending: list, cfg: SynthesisConfig, journal: Path,
                        journaled: Callable[[list[dict]], None]) -> None:
    """Every pending batch through the generator, then the scorer, then the journal, in order.

    With cfg.overlap_scoring one scoring thread runs batch b's gate, quality and journal append
    while this thread generates batch b+1: the engine no longer idles while the gate's models
    (MiniLM, spaCy, a verifier) score, and on CPU the two halves use different cores. Scoring is
    deterministic, so the records are the same either way; a crash loses at most the batches not
    yet journaled, as before.
    """
    def score_and_journal(generated) -> list[dict]:
        records = score_batch(generated, cfg)
        append_journal(journal, records)
        return records

    if not cfg.overlap_scoring:
        for b, docs in pending:
            journaled(score_and_journal(generate_batch(backend, docs, cfg, b)))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="synpro-score") as scorer:
        in_flight = None
        for b, docs in pending:
            generated = generate_batch(backend, docs, cfg, b)
            if in_flight is not None:
                journaled(in_flight.result())  # at most one batch waits to be scored
            in_flight = scorer.submit(score_and_journal, generated)
        if in_flight is not None:
            journaled(in_flight.result())


def _wait_for_ranks(wdir: Path, world: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while True:
        missing = [r for r in range(world) if not (wdir / f"done.rank{r}.json").exists()]
        if not missing:
            return
        if time.time() > deadline:
            raise TimeoutError(f"ranks {missing} did not finish within {timeout_s:.0f} s; rerun them to resume")
        time.sleep(5)


# ------------------------------------------------------------------------------- finalize

def pretraining_tokenizer(cfg: SynthesisConfig) -> Optional[str]:
    """The tokenizer the run's organic pool was prepared with (its meta.json): a synthetic round is
    blended into the same pretraining run, so it must use the same vocabulary (e.g. one trained by
    `synpro prepare --train-tokenizer`). None (the default SmolLM2 tokenizer) when the run has no
    prepared data."""
    meta = (cfg.organic or RunDir(cfg.run_dir).organic_prefix) + ".meta.json"
    if not os.path.exists(meta):
        return None
    try:
        return json.loads(Path(meta).read_text(encoding="utf-8")).get("tokenizer")
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: invalid JSON ({e})") from None


def _journal_index(wdir: Path) -> tuple[dict[str, tuple[Path, int, bool]], int]:
    """source id -> (journal, byte offset of its record, kept), reading each journal once and
    holding no text; plus how many duplicate records were seen (never let into the data)."""
    index: dict[str, tuple[Path, int, bool]] = {}
    duplicates = 0
    for path in journal_files(wdir):
        for offset, rec in iter_journal(path):
            if rec["source_id"] in index:
                duplicates += 1  # cannot happen with the skip logic
                continue
            index[rec["source_id"]] = (path, offset, bool(rec["kept"]))
    return index, duplicates


def _finalize_workers(cfg: SynthesisConfig, kept: int) -> int:
    if cfg.finalize_workers is not None:
        return max(1, cfg.finalize_workers)
    return min(8, os.cpu_count() or 1) if kept >= 4096 else 1


def finalize(cfg: SynthesisConfig, selected: list[SourceDoc], fingerprint: dict) -> dict:
    """Build KIND.{bin,idx}, provenance, dropped and the manifest entry from the journals.

    Streamed: the journals are indexed (id -> offset), then read back record by record in the
    selection's order while the tokenizer (a pool of processes for a large round) works a few
    chunks ahead and this process appends to the IndexedDataset and the provenance; memory holds
    the index, not the round. The bytes are the same for any number of workers."""
    from synpro_megatron.data.indexed import AtomicIndexedDatasetWriter
    from synpro_megatron.data.tokenizer import document_tokenizer, load_tokenizer

    wdir = work_dir(cfg)
    index, duplicates = _journal_index(wdir)
    expected = [d.doc_id for d in selected]
    missing = [i for i in expected if i not in index]
    if missing:
        raise RuntimeError(f"{len(missing)} source documents have no journaled rewrite (first: {missing[0]!r}); "
                           "rerun synthesize to finish them")
    stray = set(index) - set(expected)
    if stray:
        raise RuntimeError(f"journal in {wdir} has {len(stray)} documents outside this job's selection")

    tokenizer_name = cfg.tokenizer or pretraining_tokenizer(cfg)
    tok = load_tokenizer(tokenizer_name)
    run = RunDir(cfg.run_dir)
    prefix = run.synthetic_prefix(cfg.round, cfg.kind)
    n_kept = sum(index[i][2] for i in expected)
    gen_secs, gen_toks = 0.0, 0

    def kept_records(write_dropped) -> Iterator[dict]:
        """The journaled records in source order; dropped ones go straight to their file."""
        nonlocal gen_secs, gen_toks
        for doc_id in expected:
            path, offset, _ = index[doc_id]
            rec = read_jsonl_at(str(path), offset)
            gen_secs += rec.get("generation_seconds", 0)
            gen_toks += rec.get("generated_tokens", 0)
            if rec["kept"]:
                yield rec
            else:
                write_dropped({"source_id": rec["source_id"], "source_index": rec["source_index"],
                               "reasons": rec["reasons"]})

    with document_tokenizer(tokenizer_name, _finalize_workers(cfg, n_kept)) as tokenize, \
            AtomicIndexedDatasetWriter(prefix, tok.vocab_size) as data, \
            atomic_jsonl_writer(run.provenance(cfg.round, cfg.kind), sort_keys=False) as write_provenance, \
            atomic_jsonl_writer(run.dropped(cfg.round, cfg.kind), sort_keys=False) as write_dropped:
        for r, ids in tokenize(kept_records(write_dropped), lambda rec: rec["text"]):
            write_provenance({"synthetic_index": data.num_docs, "source_id": r["source_id"],
                              "source_index": r["source_index"], "tokens": len(ids),
                              "faithfulness": r["faithfulness"], "quality": r["quality"],
                              "format": r["format"], "pieces": r["pieces"]})
            data.add_document(ids)

    sha = hashlib.sha256()
    with open(f"{prefix}.bin", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    entry = {
        "prefix": os.path.relpath(prefix, cfg.run_dir), "documents": n_kept, "dropped": len(expected) - n_kept,
        "sources": len(expected), "tokens": data.num_tokens, "bin_sha256": sha.hexdigest(),
        "provenance": os.path.relpath(run.provenance(cfg.round, cfg.kind), cfg.run_dir),
        "tokenizer": tok.name, "duplicates_ignored": duplicates,
        "generated_tokens_per_s": round(gen_toks / gen_secs, 2) if gen_secs else None,
        "job": fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    update_manifest(cfg.run_dir, cfg.round, cfg.kind, entry)
    return entry


def update_manifest(run_dir: str, round_k: int, kind: str, entry: dict) -> dict:
    """Set manifest['rounds'][K][kind] = entry under a file lock (rephrase and reformat jobs may
    finish at the same time), written to a temporary file and renamed."""
    path = Path(RunDir(run_dir).manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = {"version": 1, "rounds": {}}
        if path.exists():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: corrupt manifest ({e}); fix or remove it") from None
        manifest.setdefault("rounds", {}).setdefault(str(round_k), {})[kind] = entry
        atomic_write_json(str(path), manifest, indent=1)
    return manifest

