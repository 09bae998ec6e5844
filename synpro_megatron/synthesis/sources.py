"""Which documents a synthesis job (and GRPO training) rewrites.

The default is the run's own prepared organic pool: the corpus `synpro prepare` tokenized into
RUN_DIR/data/organic, restricted to its training ids (held-out documents must stay unseen by the
generators). Only a run with no prepared data falls back to the packaged web sample, and says so.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from synpro_megatron.rundir import RunDir

PACKAGED_SAMPLE = Path(__file__).resolve().parent.parent / "assets" / "web_sample.jsonl.gz"


@dataclass
class SourceDoc:
    index: int  # position in the source file (record order)
    doc_id: str
    text: str


@dataclass
class SourcePool:
    path: str  # the JSONL(.gz) the documents are read from
    only_ids: Optional[set]  # training ids of the prepared pool (held-out excluded); None: every record
    origin: str  # "explicit" | "run" | "packaged"


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def organic_pool(run_dir: str, organic: Optional[str] = None, explicit: Optional[str] = None,
                 log: Callable[[str], None] = _warn) -> SourcePool:
    """The documents to rewrite: `explicit` when given; else the corpus prepared at `organic`
    (default RUN_DIR/data/organic), its training ids only; else the packaged sample (logged)."""
    if explicit:
        return SourcePool(explicit, None, "explicit")
    prefix = organic or RunDir(run_dir).organic_prefix
    meta_path = prefix + ".meta.json"
    if os.path.exists(meta_path):
        try:
            info = json.loads(Path(meta_path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: invalid JSON ({e})") from None
        source = info.get("input")
        if not source or not os.path.exists(source):
            raise FileNotFoundError(f"{meta_path}: field 'input' names {source!r}, which does not exist; "
                                    "the organic documents are needed as the generator's sources "
                                    "(pass --source-jsonl to point at them)")
        ids_file = prefix + ".docids.json"
        if not os.path.exists(ids_file):
            raise FileNotFoundError(f"{ids_file} not found: {prefix} is not a complete `synpro prepare` output")
        ids = set(json.loads(Path(ids_file).read_text(encoding="utf-8")))
        log(f"[synpro] sources: the run's organic pool {source} ({len(ids)} training documents; "
            f"held-out documents excluded)")
        return SourcePool(source, ids, "run")
    log(f"[synpro] sources: no prepared organic data at {prefix} (run `synpro prepare --output {prefix}`); "
        f"using the packaged web sample {PACKAGED_SAMPLE}")
    return SourcePool(str(PACKAGED_SAMPLE), None, "packaged")


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


def load_pool(pool: SourcePool) -> list[SourceDoc]:
    return load_sources(pool.path, pool.only_ids)


def load_losses(path: str, docs: list[SourceDoc]) -> list[float]:
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
