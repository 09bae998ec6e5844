"""Synthesis yield: how many documents' rewrites pass the faithfulness gate, per selection rule.

One set of samples, gated under each rule side by side (so the rules see the same generations):

  doc-level   the rule before per-piece selection: sample c of a document = its pieces' c-th
              samples joined, gated against the whole document; kept if any c passes
  per-piece   each piece's samples gated against the piece; the best passing one per piece
              (a rephrase needs every piece, a reformat at least one)
  + clean-up  per-piece, after generators/cleanup.py (and, for reformat, the entry filter)

for zero-shot and few-shot prompts. Documents: the first --docs of the packaged web sample with at
least --min-chars characters. CPU by default (HFBackend, the offline SmolLM2-135M-Instruct).

    python bench/synthesis_yield.py [--docs 6] [--candidates 2] [--temperature 0.5] [--kinds rephrase reformat]
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def first_documents(n: int, min_chars: int) -> list[str]:
    docs = []
    with gzip.open(REPO / "synpro_megatron" / "assets" / "web_sample.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text) >= min_chars:
                docs.append(text)
            if len(docs) == n:
                break
    return docs


def yields(kind: str, docs: list[str], pieces: list[list[str]], raws: list[list[list[str]]], cfg) -> dict:
    """Documents kept under each rule. raws[d][p] = the samples of piece p of document d."""
    from synpro_megatron.generators.chunking import join_outputs
    from synpro_megatron.generators.prompts import output_units, parse_output
    from synpro_megatron.synthesis.rewrite import candidates as _candidates, keeps_document
    from synpro_megatron.rewards.faithfulness import faithfulness_batch

    n = cfg.candidates
    # doc-level: join the c-th parsed sample of every piece, gate against the document
    srcs, outs, units = [], [], []
    for d, doc in enumerate(docs):
        for c in range(n):
            outs.append(join_outputs(kind, [parse_output(kind, raws[d][p][c]) for p in range(len(pieces[d]))]))
            units.append([u for p in range(len(pieces[d])) for u in (output_units(kind, raws[d][p][c]) or [])]
                         if kind == "reformat" else None)
            srcs.append(doc)
    gates = faithfulness_batch(srcs, outs, kind=kind, config=cfg.faithfulness, units=units)
    doc_level = sum(any(g.passed for g in gates[d * n:(d + 1) * n]) for d in range(len(docs)))

    result = {"documents": len(docs), "pieces": sum(len(p) for p in pieces), "doc-level": doc_level}
    for label, clean in (("per-piece", False), ("per-piece + clean-up", True)):
        c = dataclasses.replace(cfg, clean=clean, filter_entries=clean)
        flat_src = [piece for d in range(len(docs)) for piece in pieces[d] for _ in range(n)]
        flat_raw = [s for d in range(len(docs)) for p in range(len(pieces[d])) for s in raws[d][p]]
        cands = _candidates(kind, flat_raw, flat_src, c)
        g = faithfulness_batch(flat_src, [x[0] for x in cands], kind=kind, config=c.faithfulness,
                               units=[x[1] for x in cands])
        kept, pos = 0, 0
        for d in range(len(docs)):
            passed = []
            for _ in pieces[d]:
                passed.append(any(g[i].passed for i in range(pos, pos + n)))
                pos += n
            kept += keeps_document(kind, sum(passed), len(passed))
        result[label] = kept
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--min-chars", type=int, default=400)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--max-source-tokens", type=int, default=300)
    ap.add_argument("--kinds", nargs="+", default=["rephrase", "reformat"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compare-gates", action="store_true",
                    help="also gate the same samples with the gate before issue 13 (no structured checks, verifier "
                         "or coverage) and print its per-piece + clean-up yield beside the current one")
    args = ap.parse_args()

    import torch

    from synpro_megatron.generators.backends import HFBackend
    from synpro_megatron.generators.chunking import chunk_source, piece_token_budget
    from synpro_megatron.synthesis.config import SynthesisConfig
    from synpro_megatron.synthesis.rewrite import prompt_overhead as _prompt_overhead, render_prompt

    backend = HFBackend(None)
    tok = backend.tokenizer
    count = lambda t: len(tok.encode(t, add_special_tokens=False))  # noqa: E731
    docs = first_documents(args.docs, args.min_chars)
    print(f"# synthesis yield: {len(docs)} documents, {args.candidates} samples per piece, temperature "
          f"{args.temperature}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| kind | prompts | pieces | doc-level (before) | per-piece | per-piece + clean-up | generation s |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds:
        for few_shot in (False, True):
            cfg = SynthesisConfig(kind=kind, run_dir="", candidates=args.candidates, few_shot=few_shot,
                                  max_new_tokens=args.max_new_tokens)
            budget = min(args.max_source_tokens, piece_token_budget(
                backend.context_length, _prompt_overhead(tok, cfg), args.max_new_tokens, kind))
            pieces = [chunk_source(d, count, budget) for d in docs]
            prompts = [render_prompt(cfg, p) for ps in pieces for p in ps]
            t0 = time.perf_counter()
            out = backend.generate(prompts, n=args.candidates, temperature=args.temperature, top_p=0.9,
                                   max_new_tokens=args.max_new_tokens, seed=args.seed)
            secs = time.perf_counter() - t0
            raws, pos = [], 0
            for ps in pieces:
                raws.append(out[pos:pos + len(ps)])
                pos += len(ps)
            r = yields(kind, docs, pieces, raws, cfg)
            old = ""
            if args.compare_gates:
                from synpro_megatron.rewards.faithfulness import FaithfulnessConfig

                before = FaithfulnessConfig(structured=False, verifier="off",
                                            coverage_weight={"rephrase": 0.0, "reformat": 0.0})
                r_old = yields(kind, docs, pieces, raws, dataclasses.replace(cfg, faithfulness=before))
                old = f" (old gate: {r_old['per-piece + clean-up']}/{r['documents']})"
            print(f"| {kind} | {'few-shot' if few_shot else 'zero-shot'} | {r['pieces']} | "
                  f"{r['doc-level']}/{r['documents']} | {r['per-piece']}/{r['documents']} | "
                  f"{r['per-piece + clean-up']}/{r['documents']}{old} | {secs:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
