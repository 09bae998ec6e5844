"""Matplotlib (Agg) figures for reports and `synpro effective-tokens`. Each function takes plain
data (already read from the logs) and writes one PNG atomically (temporary name, then rename)."""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy

DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Write `fig` as PNG to a temporary file next to `path`, then rename it into place."""
    plt = _pyplot()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def human_tokens(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _token_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_tokens(v) if v else "0"))


# ------------------------------------------------------------------------------------------ losses
def plot_loss_curves(runs: Dict[str, Dict[str, List[Tuple[float, float]]]], events: Sequence[dict],
                     out: str, metrics: Sequence[str] = ("heldout_loss", "reference_loss")) -> str:
    """One panel per metric; a line per run (label -> metric -> [(tokens, loss)]). `events` are
    {"kind": "plateau"|"refresh", "tokens", "label"} drawn as vertical lines on every panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.4), squeeze=False)
    styles = ["-", "--", "-.", ":"]
    titles = {"heldout_loss": "held-out organic loss", "reference_loss": "reference-set loss"}
    for ax, metric in zip(axes[0], metrics):
        for k, (label, series) in enumerate(runs.items()):
            pts = series.get(metric) or []
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, styles[k % len(styles)], marker="o" if len(pts) < 30 else None, markersize=3,
                        linewidth=1.6, label=label)
        drawn = set()
        for ev in events:
            plateau = ev["kind"] == "plateau"
            name = ("plateau detected" if plateau else "synthetic round blended in" if ev.get("blended", True)
                    else "round built, nothing passed the gate")
            # a refresh usually starts where its plateau was detected: the wide pale band keeps the
            # plateau visible under the refresh line
            ax.axvline(ev["tokens"], color="tab:orange" if plateau else "tab:green", linestyle="-" if plateau else "--",
                       linewidth=5 if plateau else 1.3, alpha=0.35 if plateau else 1.0, zorder=1 if plateau else 2,
                       label=None if name in drawn else name)
            drawn.add(name)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(f"{metric} (nats/token)")
        ax.set_title(titles.get(metric, metric))
        _token_axis(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("SynPro vs repetition: evaluation loss over training" if len(runs) > 1
                 else "evaluation loss over training")
    fig.tight_layout()
    return save_figure(fig, out)


# ------------------------------------------------------------------------------------------ blend
def plot_blend_mix(x_tokens: Sequence[float], shares: numpy.ndarray, sources: Sequence[str], out: str,
                   target: Optional[numpy.ndarray] = None, boundaries: Sequence[float] = (),
                   realized: bool = True) -> str:
    """Stacked area of each source's share per window (x: tokens at the window start)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.4))
    x = numpy.append(numpy.asarray(x_tokens, dtype=float), x_tokens[-1] + (x_tokens[-1] - x_tokens[-2]
                                                                           if len(x_tokens) > 1 else 1))
    shares = numpy.vstack([shares, shares[-1:]])
    colors = plt.get_cmap("tab10").colors
    ax.stackplot(x, shares.T, labels=[f"{s}" for s in sources], step="post", alpha=0.85,
                 colors=[colors[k % len(colors)] for k in range(len(sources))])
    if target is not None:
        cum = numpy.cumsum(numpy.vstack([target, target[-1:]]), axis=1)
        for k in range(len(sources) - 1):
            ax.step(x, cum[:, k], where="post", color="black", linestyle="--", linewidth=0.8,
                    label="schedule target" if k == 0 else None)
    for b in boundaries:
        ax.axvline(b, color="grey", linestyle=":", linewidth=1.0)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("share of samples")
    _token_axis(ax)
    ax.set_title(("realized" if realized else "scheduled") + " blend mix over training (stacked)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, out)


# ------------------------------------------------------------------------------------------ RL
def plot_reward_curves(logs: Dict[str, List[dict]], out: str) -> str:
    """Small multiples: one panel per numeric key (besides step), one line per log (label ->
    records). Keys are discovered from the records, so new reward terms show up unasked."""
    plt = _pyplot()
    keys: List[str] = []
    for records in logs.values():
        for rec in records:
            for key, v in rec.items():
                if key not in NOT_PLOTTED and _is_number(v) and key not in keys:
                    keys.append(key)
    keys.sort(key=lambda k: (0 if "combined" in k else 2 if "gate" in k else 1 if _is_reward(k) else 3, k))
    cols = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, records in logs.items():
            pts = [(r.get("step", i), r[key]) for i, r in enumerate(records) if _is_number(r.get(key))]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, marker="o" if len(pts) < 30 else None, markersize=3, linewidth=1.4, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("pass rate" if "rate" in key else "mean reward" if _is_reward(key) else key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("generator RL: rewards and faithfulness-gate pass rate per step")
    fig.tight_layout()
    return save_figure(fig, out)


NOT_PLOTTED = ("step", "time", "timestamp", "epoch")  # x axis and wall-clock stamps
REWARDS = ("combined", "quality", "faithfulness", "influence", "format")


def _is_reward(key: str) -> bool:
    return key.startswith("reward") or key.split("/")[-1] in REWARDS


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ------------------------------------------------------------------------------------------ MC eval
def plot_mc_accuracy(runs: Dict[str, List[dict]], out: str) -> str:
    """Macro accuracy (raw and length-normalised) over training tokens (or step) per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    use_tokens = all(isinstance(r.get("tokens"), (int, float)) for recs in runs.values() for r in recs)
    for label, records in runs.items():
        x = [r["tokens"] if use_tokens else r["step"] for r in records]
        line, = ax.plot(x, [r["macro_acc"] for r in records], marker="o", markersize=3, label=f"{label} acc")
        ax.plot(x, [r["macro_acc_norm"] for r in records], marker="s", markersize=3, linestyle="--",
                color=line.get_color(), label=f"{label} acc_norm")
    ax.set_xlabel("training tokens" if use_tokens else "step")
    if use_tokens:
        _token_axis(ax)
    ax.set_ylabel("macro accuracy over tasks")
    ax.set_title("zero-shot multiple-choice accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


# ------------------------------------------------------------------------------------------ effective tokens
def plot_effective_tokens(result, out: str) -> str:
    """Baseline points, the fitted L(U), and where the SynPro (and repetition) run lands on it."""
    plt = _pyplot()
    fit = result.fit
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    us = [p["unique_tokens"] for p in result.points]
    ax.scatter(us, [p["loss"] for p in result.points], color="tab:blue", zorder=3, label="baseline runs")
    marks = [result.synpro] + ([result.repetition] if result.repetition else [])
    effs = [result.effective_unique_tokens] + ([result.repetition["effective_unique_tokens"]] if result.repetition else [])
    lo = min(us + [m["unique_tokens"] for m in marks] + effs) / 1.5
    hi = max(us + [m["unique_tokens"] for m in marks] + effs) * 1.5
    grid = numpy.geomspace(lo, hi, 300)
    inside = (grid >= fit.u_min) & (grid <= fit.u_max)
    ax.plot(grid[inside], fit.loss(grid[inside]), color="tab:blue", linewidth=1.6,
            label=f"fit: L = {fit.E:.3f} + {fit.A:.3g} / U^{fit.alpha:.3f}")
    ax.plot(grid, fit.loss(grid), color="tab:blue", linewidth=1.0, linestyle=":", label="fit (extrapolated)")
    for mark, eff, color in zip(marks, effs, ("tab:red", "tab:grey")):
        ax.scatter([mark["unique_tokens"]], [mark["loss"]], color=color, marker="*", s=140, zorder=4,
                   label=f"{mark['label']} at its {human_tokens(mark['unique_tokens'])} unique tokens")
        ax.annotate("", xy=(eff, mark["loss"]), xytext=(mark["unique_tokens"], mark["loss"]),
                    arrowprops=dict(arrowstyle="->", color=color, linewidth=1.2))
        ax.axvline(eff, color=color, linestyle="--", linewidth=0.9,
                   label=f"{mark['label']} effective: {human_tokens(eff)} "
                         f"({eff / mark['unique_tokens']:.2f}x)")
    ax.set_xscale("log")
    ax.set_xlabel("unique tokens U")
    ax.set_ylabel(f"final {result.metric or 'eval loss'}")
    title = f"effective tokens: {result.synpro['label']} is worth {result.multiplier:.2f}x its unique data"
    if result.ratio_vs_repetition is not None:
        title += f"\n({result.ratio_vs_repetition:.2f}x the effective tokens of {result.repetition['label']})"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out)
