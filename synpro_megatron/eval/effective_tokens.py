"""Effective tokens: how many unique tokens a SynPro run is worth.

The fitted form
---------------
Baseline runs (plain repetition at several unique-token budgets U, all with the same training
budget; or runs on unique data, an "oracle") give points (U, L), L being a final eval loss. We
fit the saturating power law

    L(U) = E + A / U^alpha          E >= 0, A > 0, alpha > 0

(E: the loss no amount of unique data at this model size and token budget gets below; alpha: how
fast more unique data helps). A SynPro run trained on U_s unique tokens that reaches loss L_s is
worth the U at which the fitted curve reaches L_s:

    U_eff = (A / (L_s - E))^(1/alpha)         multiplier = U_eff / U_s

With repetition baselines the multiplier reads "SynPro on U_s unique tokens matches repetition on
multiplier * U_s" (the paper's "x the effective tokens of repetition"). With an oracle fit,
evaluating the repetition run as well gives both runs' U_eff; their ratio is the same quantity
measured against unique data (`repetition=` / `--repetition`).

Fitting. U is divided by its geometric mean u_ref first (A / U^alpha = B * (U/u_ref)^-alpha with
A = B * u_ref^alpha), so the parameters have similar scales at 1e8 or 1e10 tokens. For a grid of
alpha the model is linear in (E, B), solved by non-negative least squares; the best grid point
seeds scipy's bounded curve_fit, and the better of the two is kept. Three parameters need at
least three distinct budgets. A SynPro loss at or below E has no finite U_eff (error); a U_eff
outside the fitted budgets is an extrapolation and is flagged (`warnings`).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy

FORM = "L(U) = E + A / U^alpha"
METRICS = ("reference_loss", "heldout_loss")


class EffectiveTokensError(ValueError):
    """Inputs that admit no (or no meaningful) effective-token estimate."""


@dataclass
class LossFit:
    E: float
    B: float  # amplitude at U = u_ref
    alpha: float
    u_ref: float  # geometric mean of the fitted budgets
    u_min: float
    u_max: float
    n: int
    rmse: float

    @property
    def A(self) -> float:
        return self.B * self.u_ref ** self.alpha

    def loss(self, unique_tokens):
        u = numpy.asarray(unique_tokens, dtype=float)
        return self.E + self.B * (u / self.u_ref) ** (-self.alpha)

    def unique_tokens_for(self, loss: float) -> float:
        """The U at which the fitted curve reaches `loss` (inf at or below the asymptote E)."""
        gap = loss - self.E
        if gap <= 0:
            return math.inf
        return self.u_ref * (gap / self.B) ** (-1.0 / self.alpha)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["A"] = self.A
        d["form"] = FORM
        return d


def _model(x, E, B, alpha):
    return E + B * numpy.power(x, -alpha)


def fit_loss_curve(unique_tokens: Sequence[float], losses: Sequence[float]) -> LossFit:
    """Fit L(U) = E + A / U^alpha (see the module docstring) to baseline points."""
    from scipy.optimize import curve_fit, nnls

    u = numpy.asarray(unique_tokens, dtype=float)
    y = numpy.asarray(losses, dtype=float)
    if u.shape != y.shape or u.ndim != 1:
        raise EffectiveTokensError(f"need matching 1-D lists of budgets and losses, got {u.shape} and {y.shape}")
    if not (numpy.all(numpy.isfinite(u)) and numpy.all(u > 0)):
        raise EffectiveTokensError(f"unique-token budgets must be positive and finite, got {u.tolist()}")
    if not numpy.all(numpy.isfinite(y)):
        raise EffectiveTokensError(f"losses must be finite, got {y.tolist()}")
    if len(numpy.unique(u)) < 3:
        raise EffectiveTokensError(
            f"the fit {FORM} has 3 parameters and needs baseline runs at >= 3 distinct unique-token budgets; "
            f"got {len(numpy.unique(u))} ({sorted(set(u.tolist()))})")
    u_ref = float(numpy.exp(numpy.mean(numpy.log(u))))
    x = u / u_ref

    best = None  # (sse, E, B, alpha)
    for alpha in numpy.geomspace(1e-3, 5.0, 400):
        design = numpy.stack([numpy.ones_like(x), x ** -alpha], axis=1)
        (E, B), _ = nnls(design, y)
        sse = float(numpy.sum((design @ [E, B] - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, E, B, alpha)
    sse, E, B, alpha = best
    try:
        p0 = [max(E, 1e-9), max(B, 1e-9), alpha]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # covariance warnings: only the point estimate is used
            popt, _ = curve_fit(_model, x, y, p0=p0, bounds=([0.0, 0.0, 1e-4], [numpy.inf, numpy.inf, 10.0]),
                                maxfev=20000)
        refined = float(numpy.sum((_model(x, *popt) - y) ** 2))
        if numpy.all(numpy.isfinite(popt)) and refined <= sse:
            sse, (E, B, alpha) = refined, popt
    except (RuntimeError, ValueError):
        pass  # the grid solution stands
    if B <= 1e-12 * max(1.0, abs(E)):
        raise EffectiveTokensError(
            f"the baseline losses {y.tolist()} do not decrease with unique tokens {u.tolist()}: "
            f"the fit is flat (A = 0), so no loss maps to an amount of unique data")
    return LossFit(E=float(E), B=float(B), alpha=float(alpha), u_ref=u_ref, u_min=float(u.min()),
                   u_max=float(u.max()), n=int(u.size), rmse=math.sqrt(sse / u.size))


@dataclass
class EffectiveTokens:
    fit: LossFit
    points: List[dict]  # the baseline (unique_tokens, loss, label) points
    synpro: dict  # label, unique_tokens, loss
    effective_unique_tokens: float
    multiplier: float
    repetition: Optional[dict] = None  # label, unique_tokens, loss, effective_unique_tokens, multiplier
    ratio_vs_repetition: Optional[float] = None
    metric: Optional[str] = None
    last_k: Optional[int] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def extrapolated(self) -> bool:
        return bool(self.warnings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fit"] = self.fit.to_dict()
        d["extrapolated"] = self.extrapolated
        return d


def _locate(fit: LossFit, label: str, unique_tokens: float, loss: float) -> Tuple[float, List[str]]:
    u_eff = fit.unique_tokens_for(loss)
    if not math.isfinite(u_eff):
        raise EffectiveTokensError(
            f"{label}: loss {loss:.4f} is at or below the fitted asymptote E = {fit.E:.4f}; no finite amount of "
            f"unique data reaches it under {FORM}. Add baseline runs at larger budgets.")
    notes = []
    if u_eff > fit.u_max * 1.0001:
        notes.append(f"{label}: U_eff = {u_eff:.4g} extrapolates {u_eff / fit.u_max:.2f}x beyond the largest "
                     f"baseline budget ({fit.u_max:.4g}); treat it as an estimate")
    elif u_eff < fit.u_min * 0.9999:
        notes.append(f"{label}: U_eff = {u_eff:.4g} lies below the smallest baseline budget ({fit.u_min:.4g})")
    return u_eff, notes


def estimate_effective_tokens(points: Sequence[Tuple[float, float]], synpro: Tuple[float, float],
                     repetition: Optional[Tuple[float, float]] = None, labels: Optional[Sequence[str]] = None,
                     synpro_label: str = "synpro", repetition_label: str = "repetition",
                     metric: Optional[str] = None, last_k: Optional[int] = None) -> EffectiveTokens:
    """Fit the baseline points (unique_tokens, loss), then place the SynPro run (unique_tokens, loss)
    (and optionally a repetition run) on the curve. Extrapolations are warned about and listed."""
    points = [(float(u), float(loss)) for u, loss in points]
    fit = fit_loss_curve([p[0] for p in points], [p[1] for p in points])
    labels = list(labels) if labels else [f"baseline {i + 1}" for i in range(len(points))]
    u_s, loss_s = float(synpro[0]), float(synpro[1])
    if u_s <= 0:
        raise EffectiveTokensError(f"{synpro_label}: unique tokens must be positive, got {u_s}")
    u_eff, notes = _locate(fit, synpro_label, u_s, loss_s)
    result = EffectiveTokens(
        fit=fit, points=[{"label": lab, "unique_tokens": u, "loss": loss} for lab, (u, loss) in zip(labels, points)],
        synpro={"label": synpro_label, "unique_tokens": u_s, "loss": loss_s}, effective_unique_tokens=u_eff,
        multiplier=u_eff / u_s, metric=metric, last_k=last_k, warnings=notes)
    if repetition is not None:
        u_r, loss_r = float(repetition[0]), float(repetition[1])
        u_eff_r, notes_r = _locate(fit, repetition_label, u_r, loss_r)
        result.repetition = {"label": repetition_label, "unique_tokens": u_r, "loss": loss_r,
                             "effective_unique_tokens": u_eff_r, "multiplier": u_eff_r / u_r}
        result.ratio_vs_repetition = u_eff / u_eff_r
        result.warnings.extend(notes_r)
    for note in result.warnings:
        warnings.warn(note, stacklevel=2)
    return result


# ---------------------------------------------------------------------------------------- inputs
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_token_count(text: str) -> float:
    """'800000000', '8e8', '800M', '2.2B' -> a token count."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*", str(text))
    if not m:
        raise ValueError(f"not a token count: {text!r} (examples: 800000000, 8e8, 800M, 2.2B)")
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise ValueError(f"token count must be positive, got {text!r}")
    return value


def parse_run_spec(spec: str) -> Tuple[str, Optional[float]]:
    """'RUN_DIR:UNIQUE_TOKENS' -> (run_dir, tokens); a bare 'RUN_DIR' -> (run_dir, None)."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, parse_token_count(tail)
        except ValueError:
            pass  # a ':' inside the path
    return spec, None


def run_unique_tokens(run_dir: str) -> float:
    """Unique organic tokens of a run: num_tokens of its prepared dataset (pretrain_config.json -> data)."""
    cfg_path = os.path.join(run_dir, "pretrain_config.json")
    if not os.path.exists(cfg_path):
        raise EffectiveTokensError(f"{run_dir}: give the unique-token budget as RUN_DIR:TOKENS "
                                   f"(no pretrain_config.json to read the dataset from)")
    with open(cfg_path, encoding="utf-8") as f:
        data = json.load(f).get("data")
    meta = f"{data}.meta.json" if data else None
    if not meta or not os.path.exists(meta):
        raise EffectiveTokensError(f"{run_dir}: give the budget as RUN_DIR:TOKENS ({meta or 'no data prefix'} "
                                   f"not found, field 'data' of {cfg_path})")
    with open(meta, encoding="utf-8") as f:
        n = json.load(f).get("num_tokens")
    if not isinstance(n, (int, float)) or n <= 0:
        raise EffectiveTokensError(f"{meta}: field 'num_tokens' missing or not positive")
    return float(n)


def eval_series(run_dir: str, metric: str) -> List[dict]:
    """Eval records of a run that carry `metric`, one per step (a resumed run's later line wins)."""
    from synpro_megatron.pretrain.metrics import read_metrics

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    by_step = {}
    for rec in read_metrics(run_dir, kind="eval"):
        v = rec.get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def final_eval_loss(run_dir: str, metric: str = "reference_loss", last_k: int = 1) -> float:
    """Mean of `metric` over the run's last `last_k` evaluations (1: the final value)."""
    if last_k < 1:
        raise ValueError(f"last_k must be >= 1, got {last_k}")
    series = eval_series(run_dir, metric)
    if not series:
        raise EffectiveTokensError(f"{os.path.join(run_dir, 'metrics.jsonl')}: no eval record with field {metric!r}")
    tail = series[-last_k:]
    return float(sum(r[metric] for r in tail) / len(tail))


def load_points_table(path: str) -> List[Tuple[float, float, str]]:
    """(unique_tokens, loss, label) rows from a CSV (header with unique_tokens, loss[, label]) or JSON
    (a list of such objects, or {"points": [...]})."""
    rows = []
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        items = data.get("points") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a list of {{unique_tokens, loss}} objects or {{\"points\": [...]}}")
        for i, item in enumerate(items):
            rows.append(_row(item, f"{path}: points[{i}]"))
    else:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"unique_tokens", "loss"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{path}:1: header lacks column(s) {sorted(missing)}")
            for item in reader:
                rows.append(_row(item, f"{path}:{reader.line_num}"))
    return rows


def _row(item, where: str) -> Tuple[float, float, str]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object with 'unique_tokens' and 'loss'")
    for key in ("unique_tokens", "loss"):
        if item.get(key) in (None, ""):
            raise ValueError(f"{where}: field {key!r} missing")
    try:
        u = parse_token_count(item["unique_tokens"])
    except ValueError as e:
        raise ValueError(f"{where}: field 'unique_tokens': {e}") from None
    try:
        loss = float(item["loss"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field 'loss' is not a number: {item['loss']!r}") from None
    if not math.isfinite(loss):
        raise ValueError(f"{where}: field 'loss' is not finite")
    return u, loss, str(item.get("label") or f"{u:.3g} unique")


def oracle_points(run_dir: str, metric: str) -> List[Tuple[float, float, str]]:
    """Every eval point of a run on unique data (no repetition): tokens seen = unique tokens."""
    pts = [(float(r["tokens"]), float(r[metric]), f"oracle step {r['step']}")
           for r in eval_series(run_dir, metric) if isinstance(r.get("tokens"), (int, float)) and r["tokens"] > 0]
    if not pts:
        raise EffectiveTokensError(f"{run_dir}/metrics.jsonl: no eval record with tokens > 0 and {metric!r}")
    return pts
