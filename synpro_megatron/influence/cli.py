"""`synpro probe`: the per-checkpoint work of the influence reward, done once per plateau.

Computes the reference-set gradient factors at a checkpoint (saved beside it, reused by every
influence reward computed against it) and, with --doc-losses, each organic document's loss under
the checkpoint, which `synpro synthesize --select top-loss:F` uses to rewrite the hardest documents.

Writes RUN_DIR/probe/: probe.json (what was computed, where the factors live, timing) and
doc_losses.jsonl ({"id", "loss", "tokens"} per organic training document).
"""
from __future__ import annotations

import json
import os
import sys
import time


def _doc_losses(probe, limit, batch_size):
    """Mean per-token loss of each organic training document (truncated to the model's window)."""
    from tqdm import tqdm

    from synpro_megatron.data.indexed import read_documents
    from synpro_megatron.pretrain.inference import pad_batch, token_losses

    cfg = probe.loaded.config
    with open(cfg.data + ".docids.json", encoding="utf-8") as f:
        ids = json.load(f)
    docs = []
    for i, toks in enumerate(read_documents(cfg.data)):
        if limit and i >= limit:
            break
        docs.append(toks[: probe.max_len + 1].tolist())
    device = next(probe.model.parameters()).device
    rows = []
    import torch

    for i in tqdm(range(0, len(docs), batch_size), desc="document losses", file=sys.stderr, disable=None):
        chunk = docs[i:i + batch_size]
        batch, lengths = pad_batch(chunk, probe.tokenizer.eod)
        batch = batch.to(device)
        with torch.no_grad():
            losses = token_losses(probe.model, batch[:, :-1], batch[:, 1:])
        for j, n in enumerate(lengths):
            if n < 2:
                continue
            rows.append({"id": ids[i + j], "loss": float(losses[j, : n - 1].float().mean()), "tokens": n - 1})
    return rows


def run(args) -> int:
    from synpro_megatron.influence.probe import InfluenceProbe

    out_dir = os.path.join(args.run_dir, "probe")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    try:
        probe = InfluenceProbe(args.checkpoint, args.reference, k=args.k, projection=args.projection,
                               max_ref_docs=args.max_ref_docs, tp=args.tp, pp=args.pp)
    except (FileNotFoundError, ValueError) as e:
        print(f"synpro probe: error: {e}", file=sys.stderr)
        return 2
    summary = {"checkpoint": probe.loaded.checkpoint, "step": probe.loaded.step, "k": args.k,
               "projection": args.projection, "reference_docs": len(probe.reference_texts),
               "reference_ids": probe.reference_ids, "reference_seed": probe.reference_seed,
               "layers": probe.capture.layer_names, "factors": probe._cache_path(),
               "reference_seconds": round(time.time() - t0, 2)}
    if args.doc_losses:
        import torch.distributed as dist

        if args.pp > 1:
            print("synpro probe: error: --doc-losses needs --pp 1", file=sys.stderr)
            return 2
        rows = _doc_losses(probe, args.doc_limit, args.batch_size)
        if dist.get_rank() == 0:
            tmp = os.path.join(out_dir, "doc_losses.jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            os.replace(tmp, os.path.join(out_dir, "doc_losses.jsonl"))
        summary["doc_losses"] = os.path.join(out_dir, "doc_losses.jsonl")
        summary["documents_scored"] = len(rows)
    probe.close()
    tmp = os.path.join(out_dir, "probe.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, "probe.json"))
    print(f"probe: reference factors for {len(summary['layers'])} layers at step {summary['step']} -> "
          f"{summary['factors']}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("probe", help="reference-gradient factors (and document losses) at a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, or a run dir (uses checkpoints/latest)")
    p.add_argument("--run-dir", required=True, help="writes RUN_DIR/probe/")
    p.add_argument("--reference", default=None, help="reference JSONL (default: packaged reference_qa.jsonl)")
    p.add_argument("--k", type=int, default=32, help="projection size per layer factor")
    p.add_argument("--projection", choices=["reference", "random"], default="reference")
    p.add_argument("--max-ref-docs", type=int, default=64)
    p.add_argument("--doc-losses", action="store_true", help="also score every organic training document")
    p.add_argument("--doc-limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.set_defaults(func=run)
