"""Append-only, crash-safe, columnar storage of per-document valuation scores in a run directory.

Layout: ``RUN_DIR/valuation/``
  * ``sources.json``: ``{"sources": [names], "prefixes": {name: dataset prefix}}``; the ``source``
    column indexes ``sources`` (the blended dataset's source order, or just "organic"); ``doc_id`` is
    a document index in ``<prefix>.bin`` (``<prefix>.docids.json`` maps it to the corpus id).
  * ``scores-r<rank>-<first>-<last>.npz``: one chunk of rows written by one data-parallel rank,
    covering training steps first..last. Columns (numpy arrays of equal length):
    ``doc_id`` int64 (document index in its source's .bin), ``source`` int16, ``step`` int64,
    ``tokens`` int32 (loss tokens of the document in that step), ``loss`` float32 (mean per-token loss),
    ``influence`` float64 (predicted reference-loss drop of one step on the document's tokens).

Crash safety: a chunk is written to a temporary name and renamed into place (atomic on POSIX), so a
reader only ever sees whole chunks. Rows are flushed at every checkpoint (and every ``chunk_steps``
steps); on resume from step S the store drops rows of steps > S (deleting or atomically rewriting the
chunks that hold them), because those steps are trained (and scored) again. So each (document, step)
score is stored exactly once, however the run was interrupted.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Dict, List

import numpy as np

from synpro_megatron.fsutil import atomic_write_text

COLUMNS = {"doc_id": np.int64, "source": np.int16, "step": np.int64, "tokens": np.int32,
           "loss": np.float32, "influence": np.float64}
_CHUNK = re.compile(r"scores-r(\d+)-(\d+)-(\d+)\.npz$")


def valuation_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "valuation")


def _write_atomic(path: str, columns: Dict[str, np.ndarray]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, **columns)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ScoreWriter:
    """One data-parallel rank's writer. ``resume_step``: the step the run resumes from (0: fresh)."""

    def __init__(self, run_dir: str, rank: int, sources: List[str], resume_step: int, write_sources: bool,
                 prefixes: Dict[str, str] | None = None):
        self.dir = valuation_dir(run_dir)
        self.rank = rank
        os.makedirs(self.dir, exist_ok=True)
        if write_sources:
            atomic_write_text(os.path.join(self.dir, "sources.json"),
                              json.dumps({"sources": list(sources), "prefixes": dict(prefixes or {})}))
        self._rows: Dict[str, list] = {c: [] for c in COLUMNS}
        self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        """Drop this rank's rows of steps > step (they will be trained and scored again)."""
        for tmp in glob.glob(os.path.join(self.dir, f"scores-r{self.rank:03d}-*.tmp-*")):
            os.remove(tmp)  # a chunk whose write was interrupted: never renamed, never read
        for path in sorted(glob.glob(os.path.join(self.dir, f"scores-r{self.rank:03d}-*.npz"))):
            m = _CHUNK.search(path)
            first, last = int(m.group(2)), int(m.group(3))
            if last <= step:
                continue
            if first > step:
                os.remove(path)
                continue
            cols = _read_chunk(path)
            keep = cols["step"] <= step
            kept = {c: v[keep] for c, v in cols.items()}
            new_last = int(kept["step"].max()) if keep.any() else first
            new_path = os.path.join(self.dir, f"scores-r{self.rank:03d}-{first:08d}-{new_last:08d}.npz")
            _write_atomic(new_path, kept)
            if new_path != path:
                os.remove(path)

    def append(self, rows: Dict[str, list]) -> None:
        for c in COLUMNS:
            self._rows[c].extend(rows[c])

    def flush(self) -> None:
        if not self._rows["step"]:
            return
        cols = {c: np.asarray(v, dtype=t) for (c, v), t in zip(self._rows.items(), COLUMNS.values())}
        first, last = int(cols["step"].min()), int(cols["step"].max())
        path = os.path.join(self.dir, f"scores-r{self.rank:03d}-{first:08d}-{last:08d}.npz")
        _write_atomic(path, cols)
        self._rows = {c: [] for c in COLUMNS}


def _read_chunk(path: str) -> Dict[str, np.ndarray]:
    with np.load(path) as z:
        return {c: z[c] for c in COLUMNS}


def load_scores(run_dir: str) -> Dict[str, np.ndarray]:
    """Every stored row of a run (all ranks, all chunks), sorted by (step, source, doc_id)."""
    paths = sorted(p for p in glob.glob(os.path.join(valuation_dir(run_dir), "scores-r*.npz"))
                   if _CHUNK.search(p))
    if not paths:
        raise FileNotFoundError(f"no valuation scores in {valuation_dir(run_dir)} "
                                f"(run `synpro pretrain --value-documents`)")
    parts = [_read_chunk(p) for p in paths]
    cols = {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}
    order = np.lexsort((cols["doc_id"], cols["source"], cols["step"]))
    return {c: v[order] for c, v in cols.items()}


def load_sources(run_dir: str) -> Dict:
    """``{"sources": [...], "prefixes": {...}}`` as the run wrote it."""
    path = os.path.join(valuation_dir(run_dir), "sources.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found (run `synpro pretrain --value-documents` first)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
