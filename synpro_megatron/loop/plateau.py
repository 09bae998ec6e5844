"""Plateau detector: decides from the reference-set loss when pretraining has stopped improving.

Rule (all numbers end up in the returned `PlateauDecision`, which the controller logs):

1. Take the evaluations logged since the last refresh (`step > refresh_step`): a new synthetic
   round changes the data mix, so earlier losses say nothing about the current one.
2. Smooth them. `smoothing="ema"`: s_0 = x_0, s_i = a*x_i + (1-a)*s_{i-1} (a = `ema_alpha`,
   the weight of the newest evaluation). `smoothing="mean"`: s_i = mean of the last
   `mean_window` evaluations (fewer at the start). Both damp eval noise; EMA reacts faster to a
   late drop, the window mean forgets a spike after exactly `mean_window` evaluations.
3. At each evaluation i >= `window`, the relative improvement over the window is
   (s_{i-window} - s_i) / |s_{i-window}|. Relative, so one threshold fits every model size and
   loss scale. The evaluation is *flat* when that improvement is below `rel_threshold`.
4. Plateau when the last `patience` evaluations were all flat (a single flat reading from noise
   is not enough) and at least `min_steps_after_refresh` steps passed since the last refresh
   (the generators need a checkpoint that has actually trained on the previous round).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, List, Optional

from synpro_megatron.fsutil import read_jsonl

METRICS = ("reference_loss", "heldout_loss")


@dataclass
class PlateauConfig:
    metric: str = "reference_loss"  # eval field of metrics.jsonl to watch
    smoothing: str = "ema"  # "ema" | "mean"
    ema_alpha: float = 0.5  # weight of the newest evaluation in the EMA
    mean_window: int = 3  # evaluations averaged by "mean" smoothing
    window: int = 3  # compare the smoothed loss with its value this many evaluations earlier
    rel_threshold: float = 0.01  # relative improvement over `window` below which it counts as flat
    patience: int = 2  # consecutive flat evaluations needed
    min_steps_after_refresh: int = 0  # no plateau sooner than this after the last refresh

    def validate(self, where: str = "plateau") -> None:
        def bad(name, msg):
            raise ValueError(f"field '{where}.{name}': {msg}, got {getattr(self, name)!r}")

        if self.metric not in METRICS:
            bad("metric", f"must be one of {METRICS}")
        if self.smoothing not in ("ema", "mean"):
            bad("smoothing", "must be 'ema' or 'mean'")
        if not 0.0 < self.ema_alpha <= 1.0:
            bad("ema_alpha", "must be in (0, 1]")
        if self.mean_window < 1:
            bad("mean_window", "must be >= 1")
        if self.window < 1:
            bad("window", "must be >= 1")
        if not math.isfinite(self.rel_threshold):
            bad("rel_threshold", "must be finite")
        if self.patience < 1:
            bad("patience", "must be >= 1")
        if self.min_steps_after_refresh < 0:
            bad("min_steps_after_refresh", "must be >= 0")


@dataclass
class PlateauDecision:
    plateau: bool
    reason: str
    metric: str
    refresh_step: int
    step: Optional[int]  # newest evaluation considered (None: no evaluation since the refresh)
    num_evals: int
    loss: Optional[float]  # newest raw value
    smoothed: Optional[float]  # newest smoothed value
    smoothed_before: Optional[float]  # smoothed value `window` evaluations earlier
    rel_improvement: Optional[float]
    flat_count: int  # trailing consecutive flat evaluations
    patience: int
    rel_threshold: float
    window: int
    steps_since_refresh: int
    min_steps_after_refresh: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def smooth(values: List[float], cfg: PlateauConfig) -> List[float]:
    out: List[float] = []
    for i, x in enumerate(values):
        if cfg.smoothing == "ema":
            out.append(x if i == 0 else cfg.ema_alpha * x + (1.0 - cfg.ema_alpha) * out[-1])
        else:
            lo = max(0, i - cfg.mean_window + 1)
            out.append(sum(values[lo:i + 1]) / (i + 1 - lo))
    return out


def eval_series(evals: Iterable[dict], metric: str, after_step: int = -1) -> List[tuple]:
    """(step, value) pairs for `metric`, sorted by step, one per step.

    A resumed trainer may log a step twice (it redoes the steps after its last checkpoint);
    the later line wins, as it belongs to the run that continued.
    """
    by_step = {}
    for e in evals:
        if e.get("kind", "eval") != "eval" or metric not in e or e[metric] is None:
            continue
        step = int(e["step"])
        if step > after_step:
            by_step[step] = float(e[metric])
    return sorted(by_step.items())


def detect_plateau(evals: Iterable[dict], cfg: PlateauConfig, refresh_step: int = 0,
                   current_step: Optional[int] = None) -> PlateauDecision:
    """Decide on the eval records (metrics.jsonl lines) given the step of the last refresh."""
    series = eval_series(evals, cfg.metric, after_step=refresh_step)
    steps = [s for s, _ in series]
    values = [v for _, v in series]
    last_step = steps[-1] if steps else None
    now = current_step if current_step is not None else (last_step if last_step is not None else refresh_step)
    common = dict(metric=cfg.metric, refresh_step=refresh_step, step=last_step, num_evals=len(values),
                  patience=cfg.patience, rel_threshold=cfg.rel_threshold, window=cfg.window,
                  steps_since_refresh=now - refresh_step, min_steps_after_refresh=cfg.min_steps_after_refresh)
    if any(not math.isfinite(v) for v in values):
        bad = next(s for s, v in series if not math.isfinite(v))
        return PlateauDecision(plateau=False, reason=f"non-finite {cfg.metric} at step {bad}", loss=values[-1],
                               smoothed=None, smoothed_before=None, rel_improvement=None, flat_count=0, **common)
    sm = smooth(values, cfg)
    flags = []
    for i in range(cfg.window, len(sm)):
        before = sm[i - cfg.window]
        flags.append((before - sm[i]) / max(abs(before), 1e-12) < cfg.rel_threshold)
    flat = 0
    for f in reversed(flags):
        if not f:
            break
        flat += 1
    if len(sm) > cfg.window:
        before = sm[-1 - cfg.window]
        rel = (before - sm[-1]) / max(abs(before), 1e-12)
    else:
        before, rel = None, None
    if len(values) < cfg.window + cfg.patience:
        plateau, reason = False, f"need {cfg.window + cfg.patience} evaluations since the refresh, have {len(values)}"
    elif flat < cfg.patience:
        plateau, reason = False, f"improving: {flat} of {cfg.patience} trailing evaluations flat"
    elif now - refresh_step < cfg.min_steps_after_refresh:
        plateau = False
        reason = f"flat, but only {now - refresh_step} of {cfg.min_steps_after_refresh} steps since the refresh"
    else:
        plateau = True
        reason = (f"{cfg.metric} improved by less than {cfg.rel_threshold:g} (relative) over {cfg.window} "
                  f"evaluations, {flat} times in a row")
    return PlateauDecision(plateau=plateau, reason=reason, loss=values[-1] if values else None,
                           smoothed=sm[-1] if sm else None, smoothed_before=before, rel_improvement=rel,
                           flat_count=flat, **common)


def read_metrics(path: str) -> List[dict]:
    """All records of a metrics.jsonl (train and eval lines)."""
    return read_jsonl(path)


class PlateauDetector:
    """`detect_plateau` bound to a config, reading a run's metrics.jsonl."""

    def __init__(self, cfg: Optional[PlateauConfig] = None):
        self.cfg = cfg or PlateauConfig()
        self.cfg.validate()

    def decide(self, evals: Iterable[dict], refresh_step: int = 0, current_step: Optional[int] = None):
        return detect_plateau(evals, self.cfg, refresh_step, current_step)

    def decide_from_file(self, metrics_path: str, refresh_step: int = 0, current_step: Optional[int] = None):
        return self.decide(read_metrics(metrics_path), refresh_step, current_step)
