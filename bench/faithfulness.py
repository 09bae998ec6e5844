"""Faithfulness gate benchmark: catch rate per error kind and false rejects of faithful rewrites, for
the old gate, the structured checks, the trained verifier and their combination, side by side.

Pairs (all from documents the verifier never trained on):
  generated  held-out web_sample documents (id hash bucket, verifier.is_held_out): a paragraph of 3-5
             sentences; the faithful rewrite applies a faithful variant (clauses reordered, a clause
             dropped, a sentence split) to each sentence; each unfaithful pair edits one sentence of
             it with one rule of rewards/edits.py; wrong_topic is a reformat entry with a topic from
             another sentence
  handmade   bench/faithfulness_handmade.py: real paragraphs, hand-written faithful rewrites and
             single edits, one per error kind of issue 13
  smollm2    real rewrites by the offline SmolLM2-135M generator of 2-3 sentence paragraphs of
             held-out documents (few-shot rephrase prompt, the example's words banned, greedy or
             temperature 0.7, after the synthesis job's clean-up), each judged by a person:
             faithful (omissions allowed) or not, with what is wrong in "note"
             (bench/faithfulness_smollm2.jsonl)

Methods:
  old gate    the gate before issue 13 (degenerate, length, number and entity precision, MiniLM alignment)
  structured  rewards/checks.py alone (any finding rejects)
  verifier    the trained cross-encoder alone (any unit not labelled Faithful rejects)
  combined    rewards.faithfulness as the rewards and synthesis use it: old gate, structured checks,
              coverage, and the verifier's labels scaling the score (failing nothing)
  combined, verifier rejects
              the same with --verifier-rejects: a unit the verifier labels unfaithful fails

    python bench/faithfulness.py [--docs 40] [--seed 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from synpro_megatron.formats import parse_reformat  # noqa: E402
from synpro_megatron.rewards import edits  # noqa: E402
from synpro_megatron.rewards.checks import ALL_CHECKS, analyse_many, check_topic  # noqa: E402
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig, faithfulness, split_sentences  # noqa: E402
from synpro_megatron.rewards.verifier import DEFAULT_CORPUS, is_held_out, load_verifier, read_corpus  # noqa: E402

FAITHFUL = "faithful"


def generated_pairs(docs: list[dict], n_docs: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    held = [d for d in docs if is_held_out(d["id"])]
    rng.shuffle(held)
    pool = edits.EntityPool.from_texts([" ".join(split_sentences(d["text"])[:4]) for d in held[:200]])
    pairs = []
    used = 0
    for d in held:
        if used >= n_docs:
            break
        sents = split_sentences(d["text"])
        runs = [i for i in range(len(sents) - 2) if all(8 <= len(s.split()) <= 60 for s in sents[i:i + 3])]
        if not runs:
            continue
        start = rng.choice(runs)
        para = sents[start:start + min(4, len(sents) - start)]
        para = [s for s in para if 8 <= len(s.split()) <= 60][:4]
        source = " ".join(para)
        variants = []
        for s in para:
            options = [v for k, v in edits.faithful_variants(s, None, rng) if k in ("reorder", "drop_clause", "split")]
            variants.append(rng.choice(options) if options else s)
        if variants == para:
            continue
        base = " ".join(variants)
        used += 1
        pairs.append({"name": f"{d['id']} faithful", "doc_id": d["id"], "source": source, "output": base,
                      "kind": "rephrase", "error": FAITHFUL})
        other = held[(held.index(d) + 7) % len(held)]
        other_sents = [s for s in split_sentences(other["text"]) if 8 <= len(s.split()) <= 40]
        done = set()
        for i in rng.sample(range(len(para)), len(para)):
            made = edits.unfaithful_edits(para[i], rng, pool, doc_text=d["text"], other_sentences=None)
            for kind, new in made:
                if kind in done:
                    continue
                done.add(kind)
                out = variants[:i] + [new] + variants[i + 1:]
                pairs.append({"name": f"{d['id']} {kind}", "doc_id": d["id"], "source": source, "output": " ".join(out),
                              "kind": "rephrase", "error": kind})
        if other_sents:  # an invented claim: a sentence from another document inserted
            j = rng.randrange(len(variants) + 1)
            out = variants[:j] + [rng.choice(other_sents)] + variants[j:]
            pairs.append({"name": f"{d['id']} other_document", "doc_id": d["id"], "source": source,
                          "output": " ".join(out), "kind": "rephrase", "error": "other_document"})
        right = [edits.topics(s, [x for x in para if x != s], rng) for s in para]
        if all(r[0] for r in right):
            entries = [f"Topic: {r[0]}\nContent: {s}" for r, s in zip(right, para)]
            pairs.append({"name": f"{d['id']} entries", "doc_id": d["id"], "source": source,
                          "output": "\n\n".join(entries), "kind": "reformat", "error": FAITHFUL})
            wrong = [(k, r[1]) for k, r in enumerate(right) if r[1]]
            if wrong:
                k, topic = rng.choice(wrong)
                bad = entries[:k] + [f"Topic: {topic}\nContent: {para[k]}"] + entries[k + 1:]
                pairs.append({"name": f"{d['id']} wrong_topic", "doc_id": d["id"], "source": source,
                              "output": "\n\n".join(bad), "kind": "reformat", "error": "wrong_topic"})
    return pairs


def handmade(docs: list[dict]) -> list[dict]:
    from faithfulness_handmade import FAITHFUL as HAND, handmade_pairs

    by_id = {d["id"]: d["text"] for d in docs if d["id"] in HAND}
    return handmade_pairs(by_id)


def smollm2_pairs() -> list[dict]:
    path = REPO / "bench" / "faithfulness_smollm2.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({"name": f"smollm2 {rec['id']}", "doc_id": rec["id"], "source": rec["source"],
                    "output": rec["rewrite"], "kind": "rephrase",
                    "error": FAITHFUL if rec["faithful"] else "smollm2_error"})
    return out


def units_of(pair: dict) -> list[str]:
    if pair["kind"] == "reformat":
        return [f"{e.topic}. {e.content}" for e in parse_reformat(pair["output"])]
    return split_sentences(pair["output"]) or [pair["output"]]


def _copy_rule(reason: str) -> bool:
    return reason.startswith("verbatim copy")


def _rejects(result) -> bool:
    """Rejected for a faithfulness reason: the copy rules (an exact or near-verbatim copy is refused
    as adding no new view) are a usefulness policy, counted on their own in main()."""
    return any(not _copy_rule(r) for r in result.reasons)


def evaluate(pairs: list[dict], verifier) -> tuple[list[dict], dict]:
    # The copy rules (an exact copy, or a rephrase with < 10% new 3-grams, adds no new view) are a
    # policy on usefulness, not faithfulness, and the generated faithful variants are light edits by
    # construction: they are left out of every column here and counted on their own in main().
    old_cfg = FaithfulnessConfig(structured=False, verifier="off", coverage_weight={"rephrase": 0.0, "reformat": 0.0},
                                 min_novel_trigrams=0.0)
    full_cfg = FaithfulnessConfig(verifier=verifier.path if verifier is not None else "off", min_novel_trigrams=0.0)
    hard_cfg = FaithfulnessConfig(verifier=verifier.path if verifier is not None else "off", min_novel_trigrams=0.0,
                                  verifier_rejects=True)
    seconds = defaultdict(float)
    rows = []
    for n, p in enumerate(pairs):
        if n % 50 == 0:
            print(f"  pair {n}/{len(pairs)}", flush=True)
        t = time.perf_counter()
        old = faithfulness(p["source"], p["output"], kind=p["kind"], config=old_cfg)
        seconds["old gate"] += time.perf_counter() - t
        t = time.perf_counter()
        body = "\n".join(units_of(p)) if p["kind"] == "reformat" else p["output"]
        src_a, out_a = analyse_many([p["source"], body])
        findings = [f for check in ALL_CHECKS for f in check(src_a, out_a)]
        if p["kind"] == "reformat":
            for e in parse_reformat(p["output"]):
                findings += check_topic(src_a, e.topic, e.content)
        seconds["structured"] += time.perf_counter() - t
        ver_reject = None
        if verifier is not None:
            t = time.perf_counter()
            labels, _ = verifier.label_units(p["source"], units_of(p), kind=p["kind"])
            ver_reject = any(lab != "Faithful" for lab in labels)
            seconds["verifier"] += time.perf_counter() - t
        hard = None
        if verifier is not None:
            t = time.perf_counter()
            full = faithfulness(p["source"], p["output"], kind=p["kind"], config=full_cfg)
            seconds["combined"] += time.perf_counter() - t
            combined = _rejects(full)
            strict = faithfulness(p["source"], p["output"], kind=p["kind"], config=hard_cfg)
            hard, reasons = _rejects(strict), [r for r in strict.reasons if not _copy_rule(r)][:3]
        else:  # without a verifier the gate is exactly the old checks plus the structured ones
            combined = _rejects(old) or bool(findings)
            reasons = ([r for r in old.reasons if not _copy_rule(r)] + [f"{f.kind}: {f.reason}" for f in findings])[:3]
        rows.append({**{k: p[k] for k in ("name", "error", "kind", "set")}, "old gate": _rejects(old),
                     "structured": bool(findings), "verifier": ver_reject, "combined": combined,
                     "combined, verifier rejects": hard,
                     "reasons": reasons})
    return rows, {k: v / max(1, len(pairs)) for k, v in seconds.items()}


def table(rows: list[dict], methods: list[str]) -> list[str]:
    by_error = defaultdict(list)
    for r in rows:
        by_error[r["error"]].append(r)
    lines = ["| error kind | pairs | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    faithful = by_error.pop(FAITHFUL, [])
    for err in sorted(by_error):
        rs = by_error[err]
        cells = [f"{sum(bool(r[m]) for r in rs)}/{len(rs)}" for m in methods]
        lines.append(f"| {err} (caught) | {len(rs)} | " + " | ".join(cells) + " |")
    unf = [r for rs in by_error.values() for r in rs]
    if unf:
        lines.append(f"| **all unfaithful: recall** | {len(unf)} | " + " | ".join(
            f"{sum(bool(r[m]) for r in unf) / len(unf):.0%}" for m in methods) + " |")
    if faithful:
        lines.append(f"| **faithful: false rejects** | {len(faithful)} | " + " | ".join(
            f"{sum(bool(r[m]) for r in faithful)}/{len(faithful)} ({sum(bool(r[m]) for r in faithful) / len(faithful):.0%})"
            for m in methods) + " |")
        prec = []
        for m in methods:
            tp = sum(bool(r[m]) for r in unf)
            fp = sum(bool(r[m]) for r in faithful)
            prec.append(f"{tp / (tp + fp):.0%}" if tp + fp else "-")
        lines.append("| **precision of a reject** | | " + " | ".join(prec) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=40, help="held-out documents for generated pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verifier", default=None, help="verifier folder (default: the cached default one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    docs = read_corpus(str(DEFAULT_CORPUS))
    verifier = load_verifier(args.verifier, required=False)
    if verifier is None:
        print("no trained verifier cached (synpro train-verifier); the verifier column is left out", flush=True)
    sets = {"generated": generated_pairs(docs, args.docs, args.seed), "handmade": handmade(docs),
            "smollm2": smollm2_pairs()}
    pairs = [dict(p, set=name) for name, ps in sets.items() for p in ps]
    print(f"{len(pairs)} pairs: " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)
    rows, per_pair = evaluate(pairs, verifier)
    methods = (["old gate", "structured"] + (["verifier"] if verifier is not None else []) + ["combined"]
               + (["combined, verifier rejects"] if verifier is not None else []))
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores; "
          f"verifier: {verifier.path if verifier else 'none'}")
    for name in sets:
        mine = [r for r in rows if r["set"] == name]
        if mine:
            print(f"\n### {name} ({len(mine)} pairs)\n")
            print("\n".join(table(mine, methods)))
    print("\nseconds per pair (CPU): " + ", ".join(f"{k} {v:.3f}" for k, v in per_pair.items()))
    novelty_only = FaithfulnessConfig(structured=False, verifier="off")
    copies = [p for p in pairs if p["error"] == FAITHFUL and p["kind"] == "rephrase"
              and any(r.startswith("verbatim copy")
                      for r in faithfulness(p["source"], p["output"], config=novelty_only).reasons)]
    print(f"\nfaithful rephrases the copy rules (not counted above) refuse as copies or near-copies: {len(copies)}")
    # the strictest gate on offer: with a verifier, the combination whose verifier labels reject
    strictest = "combined, verifier rejects" if verifier is not None else "combined"
    missed = [r for r in rows if r["error"] != FAITHFUL and not r[strictest]]
    rejected = [r for r in rows if r["error"] == FAITHFUL and r[strictest]]
    print(f"\nmissed by {strictest}:", *(f"  {r['set']}: {r['name']}" for r in missed), sep="\n")
    print(f"\nfaithful rejected by {strictest}:", *(f"  {r['set']}: {r['name']}: {r['reasons']}" for r in rejected),
          sep="\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "seconds_per_pair": per_pair}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
