"""Synthesis job: crash-and-resume gives each source document exactly once, the dataset/provenance/
manifest agree, selection by loss, clear errors for bad generators and checkpoints, and one real
HFBackend generation."""
import hashlib
import json
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from synpro_megatron.generators.backends import GeneratorLoadError, load_generator_tokenizer, resolve_generator_path
from synpro_megatron.generators.prompts import (EXAMPLE_SOURCE, PREFILLS, REFORMAT_HEADING, render_messages,
                                                source_of)
from synpro_megatron.generators.smollm2 import smollm2_path
from synpro_megatron.formats import example_words_absent_from
from synpro_megatron.synthesis.config import SynthesisConfig
from synpro_megatron.synthesis.job import finalize, run_synthesis, trained_with_few_shot, work_dir
from synpro_megatron.synthesis.journal import append_journal, journal_path, read_journal
from synpro_megatron.synthesis.sources import PACKAGED_SAMPLE, SourceDoc, load_sources, select_documents
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig, split_sentences


class FakeReformatBackend:
    """Deterministic stand-in for a generator: turns each piece into Topic/Content entries made of
    its own sentences (faithful), except pieces whose hash starts with 0-3, which get a refusal
    (so some documents are dropped by the gate)."""

    def __init__(self):
        self.tokenizer = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
        self.context_length = 8192
        self.path = "fake-reformat-generator"
        self.prompts_seen = 0
        self.last_generated_tokens = 0

    def generate(self, prompts, n=1, temperature=1.0, top_p=0.9, max_new_tokens=512, seed=0, repetition_penalty=1.0,
                 banned_words=None):
        out = []
        for messages in prompts:
            piece = source_of(messages)
            if hashlib.sha1(piece.encode()).hexdigest()[0] in "0123":
                text = "I'm sorry, but I cannot help with rewriting this."
            else:
                entries = [f"Topic (factual): {' '.join(s.split()[:4])}\nContent: {s}" for s in split_sentences(piece)[:8]]
                text = REFORMAT_HEADING + "\n" + "\n\n".join(entries)
            out.append([text] * n)
            self.prompts_seen += 1
        self.last_generated_tokens = 10 * len(prompts) * n
        return out


class BackendCrash(RuntimeError):
    """What CrashingBackend raises: the job dies in the middle of generation, as on a kill."""


class CrashingBackend:
    """Wraps a backend and dies on generation call number `after_batches + 1` (each call is one
    batch), so exactly `after_batches` batches reach the journal before the crash."""

    def __init__(self, inner, after_batches: int):
        self.inner, self.left = inner, after_batches

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, **kw):
        if self.left == 0:
            raise BackendCrash("simulated crash in the middle of a batch")
        self.left -= 1
        return self.inner.generate(prompts, **kw)


class SlowBackend:
    """Wraps a backend so that each generate call takes `seconds` of wall time without holding the
    GIL, as a call into a GPU engine does."""

    def __init__(self, inner, seconds: float):
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, prompts, **kw):
        time.sleep(self.seconds)
        return self.inner.generate(prompts, **kw)


def _config(run_dir, **kw):
    base = dict(kind="reformat", run_dir=str(run_dir), round=1, source_jsonl=str(PACKAGED_SAMPLE), limit=14,
                batch_size=4, max_new_tokens=256, max_source_tokens=96)
    base.update(kw)
    return SynthesisConfig(**base)


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _idx_docs(prefix):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(prefix))
    return [np.array(ds[i]) for i in range(len(ds))]


def test_crash_and_resume_rewrites_each_document_exactly_once(tmp_path):
    expected = [d.doc_id for d in load_sources(str(PACKAGED_SAMPLE))[:14]]

    # reference: one uninterrupted run
    clean = run_synthesis(_config(tmp_path / "clean"), backend=FakeReformatBackend())

    # crashed run: dies after the second batch is journaled, then a torn line is left behind
    run_dir = tmp_path / "crashed"
    backend = FakeReformatBackend()
    with pytest.raises(BackendCrash):
        run_synthesis(_config(run_dir), backend=CrashingBackend(backend, after_batches=2))
    journal = work_dir(_config(run_dir)) / "journal.rank0.jsonl"
    assert len(read_journal(journal)) == 8  # two whole batches, nothing of the third
    assert not (run_dir / "synthetic" / "round_1" / "reformat.idx").exists()
    with open(journal, "ab") as f:
        f.write(b'{"source_index": 99, "source_id": "torn')  # killed in the middle of a write

    # a second crash after one more batch: the torn line is cut off, the journal grows by one batch
    with pytest.raises(BackendCrash):
        run_synthesis(_config(run_dir), backend=CrashingBackend(FakeReformatBackend(), after_batches=1))
    assert len(read_journal(journal)) == 12
    assert journal.read_bytes().endswith(b"\n")

    resumed_backend = FakeReformatBackend()
    entry = run_synthesis(_config(run_dir), backend=resumed_backend)
    records = read_journal(journal)
    assert sorted(r["source_id"] for r in records) == sorted(expected)  # each once, none lost
    assert len({r["source_id"] for r in records}) == len(records) == 14

    out = run_dir / "synthetic" / "round_1"
    prov = _read_jsonl(out / "reformat.provenance.jsonl")
    dropped = _read_jsonl(out / "reformat.dropped.jsonl")
    assert sorted([p["source_id"] for p in prov] + [d["source_id"] for d in dropped]) == sorted(expected)
    assert len(dropped) > 0 and len(prov) > 0
    assert all(d["reasons"] for d in dropped)
    assert any("empty output" in r for d in dropped for r in d["reasons"])  # a refusal parses to no entries
    assert [p["synthetic_index"] for p in prov] == list(range(len(prov)))
    assert [p["source_index"] for p in prov] == sorted(p["source_index"] for p in prov)  # source order
    assert any(p["pieces"] > 1 for p in prov)  # long sources were chunked and rejoined

    docs = _idx_docs(out / "reformat")
    assert len(docs) == len(prov) == entry["documents"]
    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    eod = tok.convert_tokens_to_ids("<|endoftext|>")
    assert all(d[-1] == eod for d in docs) and all(len(d) == p["tokens"] for d, p in zip(docs, prov))
    assert tok.decode(docs[0][:-1].tolist()).startswith("Topic: ")

    manifest = json.loads((run_dir / "synthetic" / "manifest.json").read_text())
    m = manifest["rounds"]["1"]["reformat"]
    assert m["documents"] == len(prov) and m["dropped"] == len(dropped) and m["sources"] == 14
    assert m["tokens"] == sum(len(d) for d in docs)
    assert m["bin_sha256"] == hashlib.sha256((out / "reformat.bin").read_bytes()).hexdigest()
    assert m["bin_sha256"] == clean["bin_sha256"]  # interrupted + resumed == uninterrupted, byte for byte

    # a finished job reruns as a no-op (nothing regenerated) and leaves the same bytes
    again = FakeReformatBackend()
    assert run_synthesis(_config(run_dir), backend=again)["bin_sha256"] == m["bin_sha256"]
    assert again.prompts_seen == 0


def test_changed_settings_do_not_mix_with_an_old_journal(tmp_path):
    run_synthesis(_config(tmp_path, limit=4), backend=FakeReformatBackend())
    with pytest.raises(ValueError, match="different synthesis job.*limit"):
        run_synthesis(_config(tmp_path, limit=6), backend=FakeReformatBackend())
    entry = run_synthesis(_config(tmp_path, limit=6, restart=True), backend=FakeReformatBackend())
    assert entry["sources"] == 6
    # another round lands beside the first in the manifest; the first entry is kept
    run_synthesis(_config(tmp_path, limit=3, round=2), backend=FakeReformatBackend())
    manifest = json.loads((tmp_path / "synthetic" / "manifest.json").read_text())
    assert manifest["rounds"]["1"]["reformat"]["sources"] == 6
    assert manifest["rounds"]["2"]["reformat"]["sources"] == 3
    assert manifest["rounds"]["2"]["reformat"]["prefix"] == os.path.join("synthetic", "round_2", "reformat")


def test_top_loss_selection(tmp_path):
    docs = [SourceDoc(i, f"d{i}", f"text {i}") for i in range(10)]
    losses = [0.5, 3.0, 1.0, 3.0, 0.1, 2.0, 0.2, 0.3, 0.4, 2.5]
    chosen = select_documents(docs, "top-loss:0.3", losses)
    assert [d.doc_id for d in chosen] == ["d1", "d3", "d9"]  # hardest 30 %, in source order
    assert select_documents(docs, "all") == docs
    with pytest.raises(ValueError, match="needs --doc-losses"):
        select_documents(docs, "top-loss:0.5")
    with pytest.raises(ValueError, match="must be 'all', 'top-loss:FRACTION' or 'valuation"):
        select_documents(docs, "random:0.5", losses)

    # losses from a file produced by the pretraining side (.npy aligned with the pool, or jsonl by id)
    pool = load_sources(str(PACKAGED_SAMPLE))[:8]
    np.save(tmp_path / "losses.npy", np.arange(len(load_sources(str(PACKAGED_SAMPLE))), dtype=np.float32))
    entry = run_synthesis(_config(tmp_path / "a", limit=8, select="top-loss:0.25",
                                  doc_losses=str(tmp_path / "losses.npy")), backend=FakeReformatBackend())
    assert entry["sources"] == 2
    ids = {r["source_id"] for r in read_journal(work_dir(_config(tmp_path / "a")) / "journal.rank0.jsonl")}
    assert ids == {pool[6].doc_id, pool[7].doc_id}
    with open(tmp_path / "losses.jsonl", "w") as f:
        f.write(json.dumps({"id": pool[0].doc_id, "loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no loss for"):
        run_synthesis(_config(tmp_path / "b", limit=8, select="top-loss:0.5",
                              doc_losses=str(tmp_path / "losses.jsonl")), backend=FakeReformatBackend())


def test_data_parallel_ranks_share_the_work(tmp_path):
    cfg0, cfg1 = _config(tmp_path, limit=10, rank=0, world_size=2), _config(tmp_path, limit=10, rank=1, world_size=2)
    summary1 = run_synthesis(cfg1, backend=FakeReformatBackend())  # rank 1 finishes first and leaves
    assert summary1["assigned"] == 4  # batches 1 of [0..4), [4..8), [8..10) -> the middle one
    entry = run_synthesis(cfg0, backend=FakeReformatBackend(), )
    assert entry["sources"] == 10
    wdir = work_dir(cfg0)
    r0 = {r["source_id"] for r in read_journal(wdir / "journal.rank0.jsonl")}
    r1 = {r["source_id"] for r in read_journal(wdir / "journal.rank1.jsonl")}
    assert not r0 & r1 and len(r0 | r1) == 10


# ------------------------------------------------------------------------------------- errors

def test_bad_generator_paths_get_clear_errors(tmp_path):
    with pytest.raises(GeneratorLoadError, match="generator folder not found: .*missing"):
        resolve_generator_path(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GeneratorLoadError, match=f"{empty}.*config.json is missing"):
        resolve_generator_path(str(empty))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(GeneratorLoadError, match="unreadable model config"):
        resolve_generator_path(str(broken))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    src = smollm2_path()
    (corrupt / "config.json").write_text((src / "config.json").read_text())
    with open(src / "model.safetensors", "rb") as f:
        (corrupt / "model.safetensors").write_bytes(f.read(4096))  # truncated copy
    with pytest.raises(GeneratorLoadError, match=f"corrupt or unreadable weights file {corrupt}/model.safetensors"):
        resolve_generator_path(str(corrupt))
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(GeneratorLoadError, match="corrupt or unreadable weights"):
        resolve_generator_path(str(corrupt))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(GeneratorLoadError, match="no model weights"):
        resolve_generator_path(str(no_weights))


def test_cli_reports_bad_generator_and_bad_checkpoint(tmp_path, capsys):
    from synpro_megatron.cli import main

    rc = main(["synthesize", "--kind", "rephrase", "--generator", str(tmp_path / "nope"), "--round", "1",
               "--run-dir", str(tmp_path), "--limit", "2", "--backend", "hf"])
    assert rc == 2
    assert f"generator folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err

    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "latest").write_text("5")  # names iter_0000005, which is not there
    rc = main(["train-generator", "--kind", "rephrase", "--checkpoint", str(tmp_path / "run"),
               "--run-dir", str(tmp_path / "out"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "bad pretraining checkpoint" in err and "iter_0000005" in err
    rc = main(["train-generator", "--kind", "rephrase", "--checkpoint", str(tmp_path / "nowhere"),
               "--run-dir", str(tmp_path / "out")])
    assert rc == 2 and str(tmp_path / "nowhere") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_corrupt_checkpoint_is_named_when_loading():
    from synpro_megatron.rl.grpo import build_influence_scorer

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "checkpoints" / "iter_0000003"
        ckpt.mkdir(parents=True)
        (ckpt / "metadata.json").write_text("garbage, not a checkpoint")
        (Path(d) / "checkpoints" / "latest").write_text("3")
        with pytest.raises((RuntimeError, ValueError), match=f"{ckpt}"):
            build_influence_scorer(str(ckpt))


# ------------------------------------------------------------------------------------- real model

@pytest.mark.slow
def test_hf_backend_generates_real_text():
    from synpro_megatron.generators import HFBackend

    backend = HFBackend(None, batch_size=2)
    prompts = [render_messages("rephrase", "The cat sat on the mat. It was warm."),
               render_messages("reformat", "Water boils at 100 degrees Celsius at sea level.")]
    first = backend.generate(prompts, n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3)
    assert len(first) == 2 and all(len(group) == 2 for group in first)
    assert all(isinstance(t, str) and t.strip() for group in first for t in group)
    assert backend.last_generated_tokens > 0
    assert backend.generate(prompts, n=2, temperature=1.0, top_p=0.9, max_new_tokens=8, seed=3) == first
    assert backend.context_length >= 2048
    # a prefill: the model continues the started answer, which comes back in front of the completion
    filled = backend.generate([render_messages("reformat", "Water boils at 100 degrees Celsius at sea level.",
                                               prefill=True)], n=1, temperature=0, max_new_tokens=12, seed=0)
    assert filled[0][0].startswith(PREFILLS["reformat"].strip())
    assert len(filled[0][0]) > len(PREFILLS["reformat"].strip())  # and something was generated after it
    # the worked example's names are forbidden where the document lacks them: greedy SmolLM2 answers
    # a few-shot reformat prompt about keyboards with the example's own entry, and not with the ban
    keyboards = ("Virtual keyboards let you type on a touch screen. The first phones with them appeared in 2007, "
                 "and they replaced physical keys on most models within five years.")
    ask = [render_messages("reformat", keyboards, few_shot=True)]
    copied = backend.generate(ask, n=1, temperature=0, max_new_tokens=40, seed=0)[0][0]
    assert "Millbrook" in copied
    banned = backend.generate(ask, n=1, temperature=0, max_new_tokens=40, seed=0,
                              banned_words=[example_words_absent_from(keyboards)])[0][0]
    assert not any(w.lower() in banned.lower() for w in ("Millbrook", "greenhouse", "sawmill"))
    # few-shot prompts fit the window with room for the answer
    tok = backend.tokenizer
    few = tok.apply_chat_template(render_messages("rephrase", "x", few_shot=True), tokenize=False,
                                  add_generation_prompt=True)
    assert len(tok(few)["input_ids"]) < backend.context_length // 4


def test_banned_words_hold_per_prompt_in_one_batch(tmp_path):
    """HFBackend's banned words: a word one prompt forbids never completes in that prompt's samples
    (n of them, from one batched call), while the other prompt's samples are what they were."""
    from synpro_megatron.generators import HFBackend
    from tiny_generator import make_tiny_generator

    backend = HFBackend(make_tiny_generator(tmp_path / "gen"), batch_size=4, dtype="float32")
    prompts = [render_messages("rephrase", "A short note about dogs."), render_messages("rephrase", "Cats sleep.")]
    kw = dict(n=2, temperature=1.0, top_p=1.0, max_new_tokens=24, seed=5)
    free = backend.generate(prompts, **kw)
    tok = backend.tokenizer
    # forbid words the first prompt's free samples wrote (multi-token ones included)
    written = [w for w in free[0][0].split() if len(w) >= 4][:4]
    assert written
    banned = backend.generate(prompts, banned_words=[written, []], **kw)
    for text in banned[0]:
        ids = tok.encode(text, add_special_tokens=False)
        for word in written:
            for form in (word, " " + word):
                seq = tok.encode(form, add_special_tokens=False)
                assert not any(ids[i:i + len(seq)] == seq for i in range(len(ids) - len(seq) + 1)), (word, text)
    assert banned[0] != free[0]
    assert banned[1] == free[1]


def test_cli_few_shot_reformat_bans_the_example_and_anchors_the_first_entry(tmp_path, monkeypatch):
    """`synpro synthesize --few-shot --anchor-first-entry`: each reformat prompt the engine gets ends
    with a first entry in its own piece's words, and forbids the worked example's names the piece lacks."""
    from synpro_megatron.cli import main
    from synpro_megatron.generators.backends import HFBackend
    from synpro_megatron.generators.prompts import source_of
    from tiny_generator import make_tiny_generator

    calls = []
    real_generate = HFBackend.generate

    def recording(self, prompts, **kw):  # our backend still generates; the call is only recorded
        calls.append((prompts, kw))
        return real_generate(self, prompts, **kw)

    monkeypatch.setattr(HFBackend, "generate", recording)
    gen = make_tiny_generator(tmp_path / "gen")
    rc = main(["synthesize", "--kind", "reformat", "--round", "1", "--generator", gen,
               "--run-dir", str(tmp_path / "run"), "--source-jsonl", str(PACKAGED_SAMPLE), "--limit", "3",
               "--backend", "hf", "--few-shot",
               "--anchor-first-entry", "--max-new-tokens", "8", "--max-source-tokens", "96"])
    assert rc == 0
    prompts = [p for ps, _ in calls for p in ps]
    assert prompts and all(EXAMPLE_SOURCE in p[1]["content"] for p in prompts)
    for prompt in prompts:
        piece, last = source_of(prompt[:-1]), prompt[-1]
        assert last["role"] == "assistant" and last["content"].startswith(f"{REFORMAT_HEADING}\nTopic (factual): ")
        topic_line, content_line = last["content"].split("\n")[1:3]
        topic = topic_line.split(": ", 1)[1]
        assert topic.lower() in piece.lower() and content_line.startswith("Content: ")
        assert content_line[len("Content: "):] in piece
    bans = [b for _, kw in calls for b in kw["banned_words"]]
    assert len(bans) == len(prompts) and all("Millbrook" in b and "greenhouse" in b for b in bans)
    records = read_journal(work_dir(_config(tmp_path / "run", limit=3)) / "journal.rank0.jsonl")
    assert len(records) == 3


# ------------------------------------------------------------------------------------- selection

class PieceParityBackend:
    """Rephrase stand-in: sample c of piece p is a faithful rewrite when (p + c) is even, a refusal
    otherwise, so only choosing the sample per piece keeps a multi-piece document whole."""

    def __init__(self, path="fake-parity-generator"):
        self.tokenizer = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
        self.context_length = 8192
        self.path = path
        self.last_generated_tokens = 0
        self.prompts = []

    def generate(self, prompts, n=1, temperature=1.0, top_p=0.9, max_new_tokens=512, seed=0, repetition_penalty=1.0,
                 banned_words=None):
        out = []
        for p, messages in enumerate(prompts):
            self.prompts.append(messages)
            piece = source_of(messages)
            faithful = "Here is a paraphrased version:\n" + "\n".join(f"In short: {s}" for s in split_sentences(piece))
            out.append([faithful if (p + c) % 2 == 0 else "I'm sorry, but I cannot rewrite this." for c in range(n)])
        return out


# The stand-ins' rewrites are faithful but not good paraphrases (mostly the source's own 3-grams,
# a little longer): these tests are about selection, so the copy and length bounds are relaxed.
LENIENT = FaithfulnessConfig(min_novel_trigrams=0.0, structured=False, verifier="off", length_ratio={"rephrase": (0.25, 5.0), "reformat": (0.05, 5.0)})


def test_best_sample_is_chosen_per_piece(tmp_path):
    common = dict(kind="rephrase", limit=6, batch_size=6, max_new_tokens=128, max_source_tokens=40,
                  faithfulness=LENIENT)
    entry = run_synthesis(_config(tmp_path / "two", candidates=2, **common), backend=PieceParityBackend())
    records = read_journal(work_dir(_config(tmp_path / "two", **common)) / "journal.rank0.jsonl")
    assert any(r["pieces"] > 1 for r in records)
    # every piece had one faithful sample among its two: every document is kept, without a refusal
    assert entry["documents"] == 6 and all(r["kept"] for r in records)
    assert all(r["pieces_passed"] == r["pieces"] for r in records)
    assert not any("sorry" in r["text"] for r in records)

    # one sample per piece: a rephrase with a failed piece is dropped whole, and the piece is named
    run_synthesis(_config(tmp_path / "one", candidates=1, **common), backend=PieceParityBackend())
    records = read_journal(work_dir(_config(tmp_path / "one", **common)) / "journal.rank0.jsonl")
    multi = [r for r in records if r["pieces"] > 1]
    assert multi and not any(r["kept"] for r in multi)
    assert all(any(reason.startswith("piece ") for reason in r["reasons"]) for r in multi)


class InventedEntryBackend(FakeReformatBackend):
    """Reformat stand-in: the faithful entries of FakeReformatBackend plus one invented entry."""

    def generate(self, prompts, n=1, **kw):
        out = []
        for messages in prompts:
            piece = source_of(messages)
            entries = [f"Topic (factual): {' '.join(s.split()[:4])}\nContent: {s}" for s in split_sentences(piece)[:3]]
            entries.append("Topic (factual): The Moon landing\nContent: Neil Armstrong walked on the Moon in 1969.")
            out.append([REFORMAT_HEADING + "\n" + "\n\n".join(entries)] * n)
        return out


def test_reformat_keeps_the_faithful_entries(tmp_path):
    common = dict(limit=3, max_source_tokens=400, faithfulness=LENIENT)
    entry = run_synthesis(_config(tmp_path / "filter", **common), backend=InventedEntryBackend())
    records = read_journal(work_dir(_config(tmp_path / "filter", **common)) / "journal.rank0.jsonl")
    assert entry["documents"] == 3
    assert all("Moon" not in r["text"] and r["text"].startswith("Topic: ") for r in records)
    assert all(any("entries failed the gate" in note for note in r["cleanup"]) for r in records)
    # gated as one block, the invented entry sinks the whole output
    entry = run_synthesis(_config(tmp_path / "block", filter_entries=False, **common), backend=InventedEntryBackend())
    assert entry["documents"] == 0
    dropped = _read_jsonl(tmp_path / "block" / "synthetic" / "round_1" / "reformat.dropped.jsonl")
    assert any("Neil Armstrong" in reason or "1969" in reason for d in dropped for reason in d["reasons"])


def test_prompts_follow_how_the_generator_was_trained(tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "synpro_generator.json").write_text(json.dumps({"kind": "rephrase", "config": {"few_shot": True}}))
    assert trained_with_few_shot(str(gen)) and not trained_with_few_shot(str(tmp_path))
    backend = PieceParityBackend(path=str(gen))
    run_synthesis(_config(tmp_path / "run", kind="rephrase", limit=2), backend=backend)
    assert all(EXAMPLE_SOURCE in m[1]["content"] for m in backend.prompts)  # the worked example comes first
    backend = PieceParityBackend(path=str(gen))
    run_synthesis(_config(tmp_path / "run2", kind="rephrase", limit=2, few_shot=False), backend=backend)
    assert not any(EXAMPLE_SOURCE in msg["content"] for m in backend.prompts for msg in m)
    (gen / "synpro_generator.json").write_text("{not json")
    with pytest.raises(ValueError, match="synpro_generator.json"):
        trained_with_few_shot(str(gen))


def test_round_is_tokenized_like_the_runs_organic_pool(tmp_path):
    """A run prepared with its own tokenizer (`synpro prepare --train-tokenizer`) gets synthetic rounds
    in that vocabulary: the round is blended into the same pretraining run."""
    from synpro_megatron.data.prepare import PrepareConfig, load_meta, prepare
    from synpro_megatron.data.tokenizer import load_tokenizer
    from synpro_megatron.rundir import RunDir

    run = RunDir(str(tmp_path / "run"))
    os.makedirs(os.path.dirname(run.organic_prefix))
    prepare(PrepareConfig(input=str(PACKAGED_SAMPLE), output=run.organic_prefix, limit=30, held_out=0.1,
                          workers=1, train_tokenizer=400))
    trained = load_meta(run.organic_prefix)["tokenizer"]
    entry = run_synthesis(_config(run.root, source_jsonl=None, limit=8), backend=FakeReformatBackend())
    assert entry["tokenizer"] == load_tokenizer(trained).name
    tok = load_tokenizer(trained)
    docs = _idx_docs(run.synthetic_prefix(1, "reformat"))
    assert docs and all(int(t) < tok.vocab_size for d in docs for t in d)
    journal = [r for r in read_journal(work_dir(_config(run.root)) / "journal.rank0.jsonl") if r["kept"]]
    assert [tok.detokenize([int(t) for t in d[:-1]]) for d in docs] == [r["text"] for r in journal]


TIMING = ("generation_seconds", "generated_tokens", "timeline")


def _batch_timelines(run_dir):
    records = read_journal(work_dir(_config(run_dir)) / "journal.rank0.jsonl")
    return {r["batch"]: r["timeline"] for r in records if "timeline" in r}, \
        [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_scoring_of_a_batch_overlaps_the_next_generation_and_changes_no_record(tmp_path):
    """The job scores batch b (gate, quality, journal) on a second thread while batch b+1
    generates: the journal shows each batch's scoring starting before the next generation ends,
    where the sequential job (--no-overlap) scores each batch after its generation and before the
    next. The records and the dataset are the same either way."""
    seq = run_synthesis(_config(tmp_path / "seq", overlap_scoring=False),
                        backend=SlowBackend(FakeReformatBackend(), 0.5))
    ovl = run_synthesis(_config(tmp_path / "ovl"), backend=SlowBackend(FakeReformatBackend(), 0.5))
    seq_times, seq_records = _batch_timelines(tmp_path / "seq")
    ovl_times, ovl_records = _batch_timelines(tmp_path / "ovl")
    assert ovl_records == seq_records and ovl["bin_sha256"] == seq["bin_sha256"]
    assert sorted(ovl_times) == sorted(seq_times) == [0, 1, 2, 3]
    for b in range(3):
        assert ovl_times[b]["score"][0] < ovl_times[b + 1]["generate"][1], ovl_times
        assert seq_times[b]["score"][1] <= seq_times[b + 1]["generate"][0], seq_times
        for times in (ovl_times, seq_times):  # a batch is scored only after it is generated
            assert times[b]["score"][0] >= times[b]["generate"][1]


def test_finalize_with_a_pool_of_tokenizers_writes_the_same_bytes(tmp_path):
    run_synthesis(_config(tmp_path, finalize_workers=1), backend=FakeReformatBackend())
    out = tmp_path / "synthetic" / "round_1"
    names = ("reformat.bin", "reformat.idx", "reformat.provenance.jsonl", "reformat.dropped.jsonl")
    one = {n: (out / n).read_bytes() for n in names}
    for n in names:
        (out / n).unlink()
    again = FakeReformatBackend()
    run_synthesis(_config(tmp_path, finalize_workers=2), backend=again)  # everything journaled: finalize only
    assert again.prompts_seen == 0
    assert {n: (out / n).read_bytes() for n in names} == one


def _journaled_round(run_dir, n_docs, texts):
    """A rephrase round of n_docs journaled over two ranks (every 7th dropped), as run_synthesis
    leaves it before finalize; returns the config, the selection and the bytes of text."""
    cfg = _config(run_dir, kind="rephrase")
    wdir = work_dir(cfg)
    wdir.mkdir(parents=True)
    selected, total_bytes = [], 0
    for i in range(n_docs):
        text = texts[i % len(texts)][:3000]
        selected.append(SourceDoc(i, f"doc-{i}", ""))
        total_bytes += len(text.encode()) if i % 7 else 0
        append_journal(journal_path(wdir, i % 2), [{
            "source_index": i, "source_id": f"doc-{i}", "batch": i // 16, "kept": i % 7 != 0, "text": text,
            "faithfulness": 1.0, "quality": 0.5, "format": 1.0, "pieces": 1, "reasons": [] if i % 7 else ["x"]}])
    return cfg, selected, total_bytes


def _finalize_peak_bytes(cfg, selected) -> tuple[dict, int]:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401 - imports and the
    from synpro_megatron.data.tokenizer import load_tokenizer                 # (cached) tokenizer are not
    load_tokenizer(None)                                                       # the round's memory
    tracemalloc.start()
    try:
        entry = finalize(cfg, selected, {})
        return entry, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_finalize_streams_the_round_instead_of_holding_it(tmp_path):
    """Rank 0 builds the dataset from journals that may be larger than its memory: the Python heap
    of finalize does not grow with the round (the old finalize held every record and every token
    list: 3x the round, 3x the peak); what it holds is one chunk of documents being tokenized."""
    texts = [d.text for d in load_sources(str(PACKAGED_SAMPLE)) if len(d.text) > 1500]
    small = _journaled_round(tmp_path / "small", 500, texts)
    cfg, selected, total_bytes = _journaled_round(tmp_path / "large", 1500, texts)
    _, small_peak = _finalize_peak_bytes(*small[:2])
    entry, peak = _finalize_peak_bytes(cfg, selected)
    assert peak < 1.4 * small_peak, (small_peak, peak, total_bytes)
    assert entry["documents"] == sum(i % 7 != 0 for i in range(1500)) and entry["dropped"] == 215
    docs = _idx_docs(tmp_path / "large" / "synthetic" / "round_1" / "rephrase")
    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    assert tok.decode(docs[0][:-1].tolist()) == texts[1][:3000]  # doc-0 was dropped; doc-1 comes first
    prov = _read_jsonl(tmp_path / "large" / "synthetic" / "round_1" / "rephrase.provenance.jsonl")
    assert [p["source_id"] for p in prov] == [f"doc-{i}" for i in range(1500) if i % 7]
    assert [p["tokens"] for p in prov] == [len(d) for d in docs]
