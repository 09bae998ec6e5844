"""`synpro synthesize`: rewrite the organic pool with a trained generator into a synthetic round.

Outputs (run_dir/synthetic/):
  round_K/KIND.bin, round_K/KIND.idx   Megatron IndexedDataset, one document (+EOD) per kept output
  round_K/KIND.provenance.jsonl        synthetic doc index -> source doc id/index and its rewards
  round_K/KIND.dropped.jsonl           sources whose rewrite failed the faithfulness gate, and why
  manifest.json                        per round/kind: counts, tokens, sha256 of the .bin, settings

How a run survives being killed: the work is cut into fixed batches of source documents (batch b
belongs to rank b % world). Each finished batch is appended to the rank's journal
(round_K/.work/KIND/journal.rankR.jsonl) in one write followed by fsync. A rerun reads every journal,
drops a torn last line, and skips source ids already journaled, so each document is rewritten
exactly once. The dataset is built from the journals only at the end (by rank 0, once every rank
has left its done marker), under temporary names, then renamed; the manifest is updated last.
Outputs that fail the gate are journaled too (as dropped), so a rerun does not retry them.

Data parallel: one process per GPU (torchrun or srun), each with its own vLLM engine; rank and
world come from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS.
"""
from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from synpro_megatron.generators.chunking import chunk_source, join_outputs, piece_token_budget
from synpro_megatron.generators.cleanup import clean_rephrase, clean_reformat_entries
from synpro_megatron.generators.prompts import (check_kind, parse_output, parse_reformat, reformat_to_text,
                                                render_messages)
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig, faithfulness_batch

PACKAGED_SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "web_sample.jsonl.gz"
FAIL_AFTER_ENV = "SYNPRO_SYNTH_FAIL_AFTER_DOCS"  # test hook: crash once this many docs are journaled


class SimulatedCrash(RuntimeError):
    """Raised by the FAIL_AFTER_ENV / fail_after_docs hook (tests kill the job half-way with it)."""


@dataclass
class SynthesisConfig:
    kind: str
    run_dir: str
    round: int = 1
    generator: Optional[str] = None  # folder; None = offline SmolLM2
    source_jsonl: Optional[str] = None  # None: the prepared organic corpus, else the packaged sample
    select: str = "all"  # all | top-loss:FRACTION
    doc_losses: Optional[str] = None  # .npy aligned with the source pool, or jsonl {"id", "loss"}
    limit: Optional[int] = None
    backend: str = "auto"  # auto | hf | vllm
    batch_size: int = 16  # source documents per journal batch
    max_new_tokens: int = 1024
    max_source_tokens: Optional[int] = None  # extra cap on a piece (default: what the window allows)
    temperature: float = 1.0
    top_p: float = 0.9
    # small generators loop on a phrase; a mild penalty keeps more rewrites past the repetition gate
    repetition_penalty: float = 1.15
    candidates: int = 1  # samples per piece; the best passing one is kept
    few_shot: Optional[bool] = None  # show a worked example first; None: as the generator was trained
    prefill: bool = False  # start the answer with the lead line / heading (the model continues it)
    clean: bool = True  # cut meta sentences, loops and cut-off tails / repeated and cut-off entries (cleanup.py)
    filter_entries: bool = True  # reformat: keep the entries that pass the gate on their own
    seed: int = 1234
    tokenizer: Optional[str] = None  # pretraining tokenizer for the .bin (default SmolLM2)
    rank: Optional[int] = None
    world_size: Optional[int] = None
    restart: bool = False
    wait_timeout_s: float = 6 * 3600.0
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)


@dataclass
class SourceDoc:
    index: int  # position in the source file (record order)
    doc_id: str
    text: str


# ------------------------------------------------------------------------------- paths & small io

def round_dir(run_dir: str, round_k: int) -> Path:
    return Path(run_dir) / "synthetic" / f"round_{round_k}"


def work_dir(cfg: SynthesisConfig) -> Path:
    return round_dir(cfg.run_dir, cfg.round) / ".work" / cfg.kind


def manifest_path(run_dir: str) -> Path:
    return Path(run_dir) / "synthetic" / "manifest.json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rank_and_world(cfg: SynthesisConfig) -> tuple[int, int]:
    env = os.environ
    world = cfg.world_size or int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
    rank = cfg.rank if cfg.rank is not None else int(env.get("RANK") or env.get("SLURM_PROCID") or 0)
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    return rank, world


# ------------------------------------------------------------------------------- sources

def default_source(run_dir: str) -> tuple[str, Optional[set]]:
    """The corpus `synpro prepare` tokenized for this run (training ids only: held-out documents
    must stay unseen), else the packaged web sample."""
    meta = Path(run_dir) / "data" / "organic.meta.json"
    if meta.exists():
        info = json.loads(meta.read_text(encoding="utf-8"))
        ids_file = Path(run_dir) / "data" / "organic.docids.json"
        ids = set(json.loads(ids_file.read_text(encoding="utf-8"))) if ids_file.exists() else None
        if info.get("input") and os.path.exists(info["input"]):
            return info["input"], ids
    return str(PACKAGED_SAMPLE), None


def load_sources(path: str, only_ids: Optional[set] = None) -> list[SourceDoc]:
    from synpro_megatron.data.prepare import read_corpus

    docs, seen = [], set()
    for i, rec in enumerate(read_corpus(path)):
        if rec.doc_id in seen:
            raise ValueError(f"{path}:{rec.line}: duplicate document id {rec.doc_id!r}")
        seen.add(rec.doc_id)
        if only_ids is None or rec.doc_id in only_ids:
            docs.append(SourceDoc(i, rec.doc_id, rec.text))
    if not docs:
        raise ValueError(f"{path}: no source documents")
    return docs


def _load_losses(path: str, docs: list[SourceDoc]) -> list[float]:
    if path.endswith(".npy"):
        import numpy as np

        arr = np.load(path)
        if arr.ndim != 1 or len(arr) != len(docs):
            raise ValueError(f"{path}: expected one loss per source document ({len(docs)}), got shape {arr.shape}")
        return [float(x) for x in arr]
    by_id = {}
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                by_id[str(obj["id"])] = float(obj["loss"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: expected {{\"id\": ..., \"loss\": number}} ({e})") from None
    missing = [d.doc_id for d in docs if d.doc_id not in by_id]
    if missing:
        raise ValueError(f"{path}: no loss for {len(missing)} source documents (first: {missing[0]!r})")
    return [by_id[d.doc_id] for d in docs]


def select_documents(docs: list[SourceDoc], select: str, losses: Optional[list[float]] = None) -> list[SourceDoc]:
    """'all', or 'top-loss:F': the fraction F of documents the current model finds hardest
    (highest loss; ties by position), returned in source order."""
    if select == "all":
        return list(docs)
    if not select.startswith("top-loss:"):
        raise ValueError(f"--select must be 'all' or 'top-loss:FRACTION', got {select!r}")
    try:
        fraction = float(select.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"--select {select!r}: FRACTION is not a number") from None
    if not 0 < fraction <= 1:
        raise ValueError(f"--select {select!r}: FRACTION must be in (0, 1]")
    if losses is None:
        raise ValueError("--select top-loss needs --doc-losses (per-document losses from the pretraining side)")
    k = max(1, round(fraction * len(docs)))
    order = sorted(range(len(docs)), key=lambda i: (-losses[i], i))[:k]
    return [docs[i] for i in sorted(order)]


# ------------------------------------------------------------------------------- journal

def read_journal(path: Path, repair: bool = False) -> list[dict]:
    """Records of one journal. A torn last line (killed mid-write) is ignored, and cut off when
    `repair` (only the owning rank repairs its own journal)."""
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_bytes += len(line)
    if repair and good_bytes < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
            f.flush()
            os.fsync(f.fileno())
    return records


def _append_journal(path: Path, records: list[dict]) -> None:
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    with open(path, "ab") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _journal_files(wdir: Path) -> list[Path]:
    return sorted(wdir.glob("journal.rank*.jsonl"))


# ------------------------------------------------------------------------------- generation

def _batch_seed(cfg: SynthesisConfig, batch_index: int) -> int:
    digest = hashlib.sha256(f"{cfg.seed}:{cfg.kind}:{cfg.round}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _token_counter(tokenizer):
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def render_prompt(cfg: SynthesisConfig, piece: str) -> list[dict]:
    return render_messages(cfg.kind, piece, few_shot=bool(cfg.few_shot), prefill=cfg.prefill)


def _prompt_overhead(tokenizer, cfg: SynthesisConfig) -> int:
    from synpro_megatron.generators.backends import render_chat

    ids = tokenizer(render_chat(tokenizer, render_prompt(cfg, "")), add_special_tokens=False)["input_ids"]
    return len(ids) + 8  # + the separator tokens around the document


def _relaxed_for_entries(config: FaithfulnessConfig) -> FaithfulnessConfig:
    # One entry is a small part of its source by design: the length bounds apply to the kept set.
    return dataclasses.replace(config, length_ratio={**config.length_ratio, "reformat": (0.0, float("inf"))})


def _reformat_candidates(raws: list[str], sources: list[str], cfg: SynthesisConfig) -> list[tuple]:
    """(text, units, notes) per reformat completion: entries parsed, repeated and cut-off entries
    dropped, then each entry gated on its own against the piece; the faithful ones are kept."""
    parsed = []
    for raw, src in zip(raws, sources):
        entries, notes = parse_reformat(raw), []
        if cfg.clean:
            entries, notes = clean_reformat_entries(entries, src)
        parsed.append((entries, notes))
    verdicts: list = []
    if cfg.filter_entries:
        flat_src = [src for src, (entries, _) in zip(sources, parsed) for _ in entries]
        flat_out = [e.as_text() for entries, _ in parsed for e in entries]
        flat_units = [[f"{e.topic}. {e.content}"] for entries, _ in parsed for e in entries]
        verdicts = faithfulness_batch(flat_src, flat_out, kind="reformat", units=flat_units,
                                      config=_relaxed_for_entries(cfg.faithfulness)) if flat_out else []
    out, pos = [], 0
    for entries, notes in parsed:
        if cfg.filter_entries:
            mine = verdicts[pos:pos + len(entries)]
            pos += len(entries)
            failed = [(e, v) for e, v in zip(entries, mine) if not v.passed]
            if failed:
                notes = notes + [f"{len(failed)} of {len(entries)} entries failed the gate"]
                # why, for the journal: a candidate left with no entry is dropped for these reasons
                notes += [f"entry {e.topic[:40]!r}: {v.reasons[0]}" for e, v in failed[:3]]
            entries = [e for e, v in zip(entries, mine) if v.passed]
        out.append((reformat_to_text(entries), [f"{e.topic}. {e.content}" for e in entries], notes))
    return out


def _candidates(kind: str, raws: list[str], sources: list[str], cfg: SynthesisConfig) -> list[tuple]:
    """(text, units, clean-up notes) for each completion of each piece, before the gate."""
    if kind == "reformat":
        return _reformat_candidates(raws, sources, cfg)
    out = []
    for raw, src in zip(raws, sources):
        text = parse_output(kind, raw)
        notes: list[str] = []
        if cfg.clean:
            cleaned = clean_rephrase(text, src)
            text, notes = cleaned.text, cleaned.removed
        out.append((text, None, notes))
    return out


def keeps_document(kind: str, pieces_passed: int, pieces: int) -> bool:
    """A rephrase keeps its document only when every piece passed (a rewrite with a hole is not the
    same document); a reformat keeps the pieces that passed (its entries stand on their own)."""
    return pieces > 0 and (pieces_passed == pieces if kind == "rephrase" else pieces_passed > 0)


def rewrite_batch(backend, docs: list[SourceDoc], cfg: SynthesisConfig, batch_index: int) -> list[dict]:
    """Journal records for one batch.

    Each document is cut into pieces; each piece gets `candidates` samples, each sample is parsed,
    cleaned (see generators/cleanup.py) and gated against its own piece, and the best passing
    sample of each piece is kept. A rephrase keeps its document only when every piece has a passing
    sample (a rewrite with a hole is not the same document); a reformat keeps the pieces that have
    one (its entries stand on their own).
    """
    from synpro_megatron.rewards.format import format_reward
    from synpro_megatron.rewards.quality import quality_reward

    tok = backend.tokenizer
    count = _token_counter(tok)
    budget = piece_token_budget(backend.context_length, _prompt_overhead(tok, cfg), cfg.max_new_tokens, cfg.kind)
    if cfg.max_source_tokens:
        budget = min(budget, cfg.max_source_tokens)
    pieces = [chunk_source(d.text, count, budget, encode=lambda t: tok.encode(t, add_special_tokens=False),
                           decode=tok.decode) for d in docs]
    flat = [p for ps in pieces for p in ps]
    t0 = time.time()
    completions = backend.generate([render_prompt(cfg, p) for p in flat], n=cfg.candidates,
                                   temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_new_tokens=cfg.max_new_tokens, seed=_batch_seed(cfg, batch_index),
                                   repetition_penalty=cfg.repetition_penalty)
    gen_seconds = time.time() - t0
    raws = [c for group in completions for c in group]
    sources = [p for p in flat for _ in range(cfg.candidates)]
    cands = _candidates(cfg.kind, raws, sources, cfg)
    gates = faithfulness_batch(sources, [c[0] for c in cands], kind=cfg.kind, config=cfg.faithfulness,
                               units=[c[1] for c in cands])
    records, piece_pos = [], 0
    for j, d in enumerate(docs):
        chosen, passed_pieces, passing_total = [], 0, 0
        for _ in pieces[j]:
            idx = range(piece_pos * cfg.candidates, (piece_pos + 1) * cfg.candidates)
            piece_pos += 1
            passing = [i for i in idx if gates[i].passed]
            passing_total += len(passing)
            passed_pieces += bool(passing)
            # the best passing sample; with none, the best-scoring one (its reasons are reported)
            best = max(passing or idx, key=lambda i: (gates[i].score, -i))
            chosen.append(best)
        n = len(pieces[j])
        kept = keeps_document(cfg.kind, passed_pieces, n)
        use = [i for i in chosen if gates[i].passed] if kept else chosen
        text = join_outputs(cfg.kind, [cands[i][0] for i in use])
        weights = [max(1, len(sources[i])) for i in use]
        faith = sum(gates[i].score * w for i, w in zip(use, weights)) / max(1, sum(weights))
        # a failed piece's gate reasons, then what its clean-up removed (for reformat: why entries failed)
        reasons = [f"piece {k + 1}/{n}: {r}" if n > 1 else r
                   for k, i in enumerate(chosen) if not gates[i].passed for r in gates[i].reasons + cands[i][2]]
        records.append({
            "source_index": d.index, "source_id": d.doc_id, "batch": batch_index, "kept": kept,
            "text": text, "faithfulness": round(faith, 6), "quality": round(quality_reward([d.text], [text])[0], 6),
            "format": round(sum(format_reward(cfg.kind, raws[i]) for i in use) / max(1, len(use)), 6),
            "pieces": n, "pieces_passed": passed_pieces, "candidates_passed": passing_total,
            "cleanup": [note for i in use for note in cands[i][2]], "reasons": reasons,
        })
    if records:
        records[0]["generation_seconds"] = round(gen_seconds, 3)
        records[0]["generated_tokens"] = int(getattr(backend, "last_generated_tokens", 0) or 0)
    return records


# ------------------------------------------------------------------------------- the job

def _fingerprint(cfg: SynthesisConfig, generator: str, source: str, selected: list[SourceDoc]) -> dict:
    ids_digest = hashlib.sha256("\n".join(d.doc_id for d in selected).encode()).hexdigest()
    fingerprint = {"kind": cfg.kind, "round": cfg.round, "generator": generator, "source": os.path.abspath(source),
                   "select": cfg.select, "limit": cfg.limit, "documents": len(selected), "ids_sha256": ids_digest,
                   "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                   "top_p": cfg.top_p, "candidates": cfg.candidates, "seed": cfg.seed,
                   "repetition_penalty": cfg.repetition_penalty, "few_shot": cfg.few_shot, "prefill": cfg.prefill,
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
    return SummaryWriter(str(Path(cfg.run_dir) / "tensorboard" / f"synthesize-round_{cfg.round}-{cfg.kind}-rank{rank}"))


def run_synthesis(cfg: SynthesisConfig, backend=None, fail_after_docs: Optional[int] = None) -> dict:
    """Run (or resume) this rank's share, then, on rank 0, build the round's dataset.
    Returns the manifest entry (rank 0) or this rank's summary."""
    check_kind(cfg.kind)
    if cfg.batch_size < 1 or cfg.candidates < 1:
        raise ValueError("batch_size and candidates must be >= 1")
    rank, world = rank_and_world(cfg)
    _pin_local_gpu(cfg, world)
    source, only_ids = (cfg.source_jsonl, None) if cfg.source_jsonl else default_source(cfg.run_dir)
    pool = load_sources(source, only_ids)
    losses = _load_losses(cfg.doc_losses, pool) if cfg.doc_losses else None
    if cfg.limit is not None:
        pool, losses = pool[:cfg.limit], (losses[:cfg.limit] if losses is not None else None)
    if cfg.select.startswith("valuation:"):  # scores pretraining stored (influence/valuation.py)
        from synpro_megatron.influence.valuation import select_source_documents

        selected = select_source_documents(pool, cfg.select, cfg.run_dir)
    else:
        selected = select_documents(pool, cfg.select, losses)
    generator = _generator_name(cfg, backend)
    if cfg.few_shot is None:
        cfg = dataclasses.replace(cfg, few_shot=trained_with_few_shot(generator))
    fingerprint = _fingerprint(cfg, generator, source, selected)

    wdir = work_dir(cfg)
    job_file = wdir / "job.json"
    if cfg.restart and wdir.exists() and rank == 0:
        import shutil

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
            _write_atomic(job_file, json.dumps(fingerprint, indent=1))

    batches = [selected[i:i + cfg.batch_size] for i in range(0, len(selected), cfg.batch_size)]
    mine = [(b, docs) for b, docs in enumerate(batches) if b % world == rank]
    journal = wdir / f"journal.rank{rank}.jsonl"
    read_journal(journal, repair=True)
    done = {r["source_id"] for path in _journal_files(wdir) for r in read_journal(path)}
    pending = [(b, [d for d in docs if d.doc_id not in done]) for b, docs in mine]
    pending = [(b, docs) for b, docs in pending if docs]

    if fail_after_docs is None and os.environ.get(FAIL_AFTER_ENV):
        fail_after_docs = int(os.environ[FAIL_AFTER_ENV])
    written = 0
    if pending:
        from tqdm import tqdm

        if backend is None:
            from synpro_megatron.generators.backends import make_backend

            backend = make_backend(cfg.backend, cfg.generator)
        writer = _tensorboard(cfg, rank)
        total_docs = sum(len(d) for _, d in mine)
        bar = tqdm(total=total_docs, initial=total_docs - sum(len(d) for _, d in pending), unit="doc",
                   desc=f"synthesize {cfg.kind} r{cfg.round} rank {rank}", file=sys.stderr, disable=None)
        kept_total = 0
        try:
            for b, docs in pending:
                records = rewrite_batch(backend, docs, cfg, b)
                _append_journal(journal, records)
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
                if fail_after_docs is not None and written >= fail_after_docs:
                    raise SimulatedCrash(f"simulated crash after {written} documents ({FAIL_AFTER_ENV})")
        finally:
            bar.close()
            if writer is not None:
                writer.close()

    my_ids = [d.doc_id for _, docs in mine for d in docs]
    _write_atomic(wdir / f"done.rank{rank}.json", json.dumps({"rank": rank, "world": world, "documents": len(my_ids)}))
    summary = {"rank": rank, "world": world, "written_now": written, "assigned": len(my_ids)}
    if rank != 0:
        return summary
    _wait_for_ranks(wdir, world, cfg.wait_timeout_s)
    return finalize(cfg, selected, fingerprint)


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

def finalize(cfg: SynthesisConfig, selected: list[SourceDoc], fingerprint: dict) -> dict:
    """Build KIND.{bin,idx}, provenance and the manifest entry from the journals."""
    from synpro_megatron.data.indexed import write_indexed_dataset
    from synpro_megatron.data.tokenizer import load_tokenizer

    wdir = work_dir(cfg)
    by_id: dict[str, dict] = {}
    duplicates = 0
    for path in _journal_files(wdir):
        for rec in read_journal(path):
            if rec["source_id"] in by_id:
                duplicates += 1  # cannot happen with the skip logic; never let it into the data
                continue
            by_id[rec["source_id"]] = rec
    expected = [d.doc_id for d in selected]
    missing = [i for i in expected if i not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} source documents have no journaled rewrite (first: {missing[0]!r}); "
                           "rerun synthesize to finish them")
    stray = set(by_id) - set(expected)
    if stray:
        raise RuntimeError(f"journal in {wdir} has {len(stray)} documents outside this job's selection")

    ordered = [by_id[i] for i in expected]
    kept = [r for r in ordered if r["kept"]]
    tok = load_tokenizer(cfg.tokenizer)
    token_lists = [tok.tokenize(r["text"]) + [tok.eod] for r in kept]
    out = round_dir(cfg.run_dir, cfg.round)
    prefix = out / cfg.kind
    write_indexed_dataset(str(prefix), token_lists, tok.vocab_size)

    prov = [json.dumps({"synthetic_index": j, "source_id": r["source_id"], "source_index": r["source_index"],
                        "tokens": len(t), "faithfulness": r["faithfulness"], "quality": r["quality"],
                        "format": r["format"], "pieces": r["pieces"]}, ensure_ascii=False)
            for j, (r, t) in enumerate(zip(kept, token_lists))]
    _write_atomic(out / f"{cfg.kind}.provenance.jsonl", "".join(line + "\n" for line in prov))
    dropped = [json.dumps({"source_id": r["source_id"], "source_index": r["source_index"], "reasons": r["reasons"]},
                          ensure_ascii=False) for r in ordered if not r["kept"]]
    _write_atomic(out / f"{cfg.kind}.dropped.jsonl", "".join(line + "\n" for line in dropped))

    sha = hashlib.sha256()
    with open(f"{prefix}.bin", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    gen_secs = sum(r.get("generation_seconds", 0) for r in ordered)
    gen_toks = sum(r.get("generated_tokens", 0) for r in ordered)
    entry = {
        "prefix": os.path.relpath(prefix, cfg.run_dir), "documents": len(kept), "dropped": len(ordered) - len(kept),
        "sources": len(ordered), "tokens": int(sum(len(t) for t in token_lists)), "bin_sha256": sha.hexdigest(),
        "provenance": os.path.relpath(out / f"{cfg.kind}.provenance.jsonl", cfg.run_dir),
        "tokenizer": tok.name, "duplicates_ignored": duplicates,
        "generated_tokens_per_s": round(gen_toks / gen_secs, 2) if gen_secs else None,
        "job": fingerprint, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    update_manifest(cfg.run_dir, cfg.round, cfg.kind, entry)
    return entry


def update_manifest(run_dir: str, round_k: int, kind: str, entry: dict) -> dict:
    """Set manifest['rounds'][K][kind] = entry under a file lock (rephrase and reformat jobs may
    finish at the same time), written to a temporary file and renamed."""
    path = manifest_path(run_dir)
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
        _write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest

