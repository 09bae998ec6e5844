"""One batch of a synthesis job: documents -> journal records, in two halves.

`generate_batch` cuts each document into pieces that fit the generator's window and samples
`candidates` rewrites of each piece; `score_batch` parses and cleans each sample
(generators/cleanup.py), gates it against its own piece (rewards/faithfulness.py), keeps the best
passing sample per piece and writes the document's record with its rewards and, when dropped, why.
The job runs the scoring of one batch while the next one generates.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time

from synpro_megatron.formats import example_words_absent_from
from synpro_megatron.generators.chunking import chunk_source, join_outputs, piece_token_budget
from synpro_megatron.generators.cleanup import clean_rephrase, clean_reformat_entries
from synpro_megatron.generators.prompts import (PREFILLS, REFORMAT_HEADING, parse_output, parse_reformat,
                                                reformat_to_text, render_messages)
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig, faithfulness_batch, split_sentences
from synpro_megatron.synthesis.config import SynthesisConfig
from synpro_megatron.synthesis.sources import SourceDoc


def batch_seed(cfg: SynthesisConfig, batch_index: int) -> int:
    digest = hashlib.sha256(f"{cfg.seed}:{cfg.kind}:{cfg.round}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _token_counter(tokenizer):
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


def first_entry_anchor(piece: str) -> str:
    """The start of a reformat answer in the piece's own words: the heading, then a first entry whose
    Topic is the first noun phrase of the piece's first sentence and whose Content starts with that
    sentence's first words. Shown the worked example, the 135M generator answers most documents with
    the example's own entries; started on the document, it stays on the document."""
    from synpro_megatron.rewards.checks import spacy_parser

    first = (split_sentences(piece) or [piece.strip()])[0]
    if not first:
        return PREFILLS["reformat"]
    chunks = [c.text for c in spacy_parser()(first).noun_chunks]
    topic = next((c for c in chunks if len(c.split()) >= 2), chunks[0] if chunks else " ".join(first.split()[:3]))
    return (f"{REFORMAT_HEADING}\nTopic (factual): {topic[0].upper() + topic[1:]}\n"
            f"Content: {' '.join(first.split()[:3])}")


def render_prompt(cfg: SynthesisConfig, piece: str) -> list[dict]:
    anchored = cfg.anchor_first_entry and cfg.kind == "reformat"
    messages = render_messages(cfg.kind, piece, few_shot=bool(cfg.few_shot), prefill=cfg.prefill and not anchored)
    if anchored:  # an assistant turn at the end is a prefill: the backends continue it
        messages.append({"role": "assistant", "content": first_entry_anchor(piece)})
    return messages


def prompt_overhead(tokenizer, cfg: SynthesisConfig) -> int:
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


def candidates(kind: str, raws: list[str], sources: list[str], cfg: SynthesisConfig) -> list[tuple]:
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


@dataclasses.dataclass
class GeneratedBatch:
    """What the generator produced for one batch, before any scoring: `score_batch` needs nothing
    else (no model of the engine), so it can run on another thread while the next batch generates."""
    index: int
    docs: list[SourceDoc]
    pieces: list[list[str]]        # per document, the pieces it was cut into
    completions: list[list[str]]   # per piece, its `candidates` raw samples
    generated_tokens: int
    started: float                 # time.time() around the generate call
    ended: float


def generate_batch(backend, docs: list[SourceDoc], cfg: SynthesisConfig, batch_index: int) -> GeneratedBatch:
    """Cut each document into pieces that fit the generator's window and sample `candidates`
    rewrites of each piece, in one generate call (the engine batches them)."""
    tok = backend.tokenizer
    count = _token_counter(tok)
    budget = piece_token_budget(backend.context_length, prompt_overhead(tok, cfg), cfg.max_new_tokens, cfg.kind)
    if cfg.max_source_tokens:
        budget = min(budget, cfg.max_source_tokens)
    pieces = [chunk_source(d.text, count, budget, encode=lambda t: tok.encode(t, add_special_tokens=False),
                           decode=tok.decode) for d in docs]
    flat = [p for ps in pieces for p in ps]
    # only asked for when there is something to forbid: a backend written to the older interface
    # (without banned_words) still runs every other job
    bans = ({"banned_words": [example_words_absent_from(p) for p in flat]}
            if cfg.few_shot and cfg.ban_example_words else {})
    started = time.time()
    completions = backend.generate([render_prompt(cfg, p) for p in flat], n=cfg.candidates,
                                   temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_new_tokens=cfg.max_new_tokens, seed=batch_seed(cfg, batch_index),
                                   repetition_penalty=cfg.repetition_penalty, **bans)
    return GeneratedBatch(batch_index, list(docs), pieces, [list(c) for c in completions],
                          int(getattr(backend, "last_generated_tokens", 0) or 0), started, time.time())


def score_batch(batch: GeneratedBatch, cfg: SynthesisConfig) -> list[dict]:
    """Journal records for one generated batch.

    Each sample is parsed, cleaned (see generators/cleanup.py) and gated against its own piece,
    and the best passing sample of each piece is kept. A rephrase keeps its document only when
    every piece has a passing sample (a rewrite with a hole is not the same document); a reformat
    keeps the pieces that have one (its entries stand on their own).
    """
    from synpro_megatron.rewards.format import format_reward
    from synpro_megatron.rewards.quality import quality_reward

    scoring_started = time.time()
    docs, pieces = batch.docs, batch.pieces
    flat = [p for ps in pieces for p in ps]
    raws = [c for group in batch.completions for c in group]
    sources = [p for p in flat for _ in range(cfg.candidates)]
    cands = candidates(cfg.kind, raws, sources, cfg)
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
            "source_index": d.index, "source_id": d.doc_id, "batch": batch.index, "kept": kept,
            "text": text, "faithfulness": round(faith, 6), "quality": round(quality_reward([d.text], [text])[0], 6),
            "format": round(sum(format_reward(cfg.kind, raws[i]) for i in use) / max(1, len(use)), 6),
            "pieces": n, "pieces_passed": passed_pieces, "candidates_passed": passing_total,
            "cleanup": [note for i in use for note in cands[i][2]], "reasons": reasons,
        })
    if records:
        # when each half of the batch ran (wall clock): the job's overlap of generation and
        # scoring is read from these, and the throughput logs use the first two
        records[0]["generation_seconds"] = round(batch.ended - batch.started, 3)
        records[0]["generated_tokens"] = batch.generated_tokens
        records[0]["timeline"] = {"generate": [round(batch.started, 3), round(batch.ended, 3)],
                                  "score": [round(scoring_started, 3), round(time.time(), 3)]}
    return records

