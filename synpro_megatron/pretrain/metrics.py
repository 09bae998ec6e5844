"""Metrics to run_dir/metrics.jsonl (one JSON object per line) and TensorBoard, in Megatron's naming."""
from __future__ import annotations

import json
import math
import os
from typing import Iterator, Optional

from synpro_megatron.fsutil import atomic_write_text
from synpro_megatron.rundir import RunDir

# metrics.jsonl key -> TensorBoard tag (Megatron's names where it has one)
_TB_TAGS = {
    "lm_loss": "lm loss",
    "lr": "learning-rate",
    "grad_norm": "grad-norm",
    "tokens_per_s": "throughput/tokens-per-sec",
    "heldout_loss": "eval/heldout lm loss",
    "reference_loss": "eval/reference lm loss",
}


def read_metrics(run_dir: str, kind: Optional[str] = None) -> Iterator[dict]:
    path = RunDir(run_dir).metrics
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{lineno}: malformed metrics line") from None
            if kind is None or rec.get("kind") == kind:
                yield rec


class MetricsWriter:
    def __init__(self, run_dir: str, enabled: bool = True, truncate_after_step: int = 0):
        self.enabled = enabled
        self.path = RunDir(run_dir).metrics
        self._tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        if truncate_after_step is not None:
            self._truncate(truncate_after_step)
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(RunDir(run_dir).tensorboard(), purge_step=truncate_after_step or None)
        except ImportError:
            self._tb = None

    def _truncate(self, step: int) -> None:
        """A run resumed from step S drops what a killed run logged after S, so the curve stays one curve."""
        if not os.path.exists(self.path):
            return
        kept = [r for r in read_metrics(os.path.dirname(self.path)) if r.get("step", 0) <= step]
        if step == 0:
            kept = []
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            x = record.get("tokens", record.get("step", 0))
            for key, tag in _TB_TAGS.items():
                v = record.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(tag, v, record.get("step", 0))
                    if key.endswith("_loss"):
                        self._tb.add_scalar(f"{tag} vs tokens", v, x)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
