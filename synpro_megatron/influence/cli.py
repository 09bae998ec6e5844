"""`synpro probe`: the per-checkpoint work of the influence reward, done once per plateau.

Computes the reference-set gradient factors at a checkpoint (saved beside it, reused by every
influence reward computed against it) and, with --doc-losses, each organic document's loss under
the checkpoint, which `synpro synthesize --select top-loss:F` uses to rewrite the hardest documents.

Writes RUN_DIR/rounds/round_K/probe/ (synpro_megatron.rundir): probe.json (what was computed, where the factors live, timing) and
doc_losses.jsonl ({"id", "loss", "tokens"} per organic training document).
"""
from __future__ import annotations

import json
import os
import sys
import time

from synpro_megatron.fsutil import atomic_write_json, atomic_write_jsonl
from synpro_megatron.rundir import RunDir


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

    run = RunDir(args.run_dir)
    out_dir = run.probe_dir(args.round)
    os.makedirs(out_dir, exist_ok=True)
    checkpoint = args.checkpoint or run.latest_checkpoint()
    if checkpoint is None:
        print(f"synpro probe: error: {run.checkpoints}: no checkpoint yet; pass --checkpoint", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        probe = InfluenceProbe(checkpoint, args.reference, k=args.k, projection=args.projection,
                               max_ref_docs=args.max_ref_docs, tp=args.tp, pp=args.pp)
    except (FileNotFoundError, ValueError) as e:
        print(f"synpro probe: error: {e}", file=sys.stderr)
        return 2
    summary = {"checkpoint": probe.loaded.checkpoint, "step": probe.loaded.step, "k": args.k,
               "projection": args.projection, "reference_docs": len(probe.reference_texts),
               "layers": probe.capture.layer_names, "factors": probe._cache_path(),
               "reference_seconds": round(time.time() - t0, 2)}
    if args.doc_losses:
        import torch.distributed as dist

        if args.pp > 1:
            print("synpro probe: error: --doc-losses needs --pp 1", file=sys.stderr)
            return 2
        rows = _doc_losses(probe, args.doc_limit, args.batch_size)
        if dist.get_rank() == 0:
            atomic_write_jsonl(run.probe_doc_losses(args.round), rows, sort_keys=False)
        summary["doc_losses"] = run.probe_doc_losses(args.round)
        summary["documents_scored"] = len(rows)
    probe.close()
    atomic_write_json(os.path.join(out_dir, "probe.json"), summary, indent=1)
    print(f"probe: reference factors for {len(summary['layers'])} layers at step {summary['step']} -> "
          f"{summary['factors']}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("probe", help="reference-gradient factors (and document losses) at a checkpoint")
    p.add_argument("--run-dir", required=True, help="the run root: writes RUN_DIR/rounds/round_K/probe/")
    p.add_argument("--round", type=int, default=1, help="the round K the probe is for")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint dir, or a run dir (uses checkpoints/latest); default: the run's newest")
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
