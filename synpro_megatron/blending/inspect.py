"""`synpro blend inspect SCHEDULE`: the mix a schedule asks for vs the mix the indices realise.

Prints one row per window of samples (window start, then per source target share / realized
share) and optionally draws target vs realized per source to a PNG.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Optional

import numpy

from synpro_megatron.blending.indices import build_blend_indices
from synpro_megatron.blending.schedule import BlendSchedule, ScheduleError


def realized_mix(dataset_index: numpy.ndarray, num_sources: int, window: int) -> numpy.ndarray:
    """Share of each source per window: float64 [ceil(N / window), num_sources].

    Window w covers samples [w*window, (w+1)*window); the last one may be shorter and is
    normalised by its own length.
    """
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    index = numpy.asarray(dataset_index, dtype=numpy.int64)
    n = index.shape[0]
    num_windows = math.ceil(n / window)
    counts = numpy.zeros((num_windows, num_sources), dtype=numpy.int64)
    numpy.add.at(counts, (numpy.arange(n) // window, index), 1)
    lengths = numpy.minimum(window, n - numpy.arange(num_windows) * window)
    return counts / lengths[:, None]


def target_mix(schedule: BlendSchedule, num_samples: int, window: int) -> numpy.ndarray:
    """The schedule's share per window (same shape as realized_mix), from the cumulative target."""
    edges = numpy.minimum(numpy.arange(0, num_samples + window, window), num_samples)
    edges = numpy.unique(edges)
    cumulative = schedule.cumulative_targets(edges)
    return numpy.diff(cumulative, axis=0) / numpy.diff(edges)[:, None]


def default_num_samples(schedule: BlendSchedule) -> int:
    """Long enough to show every phase: the last boundary plus a quarter (at least 10000)."""
    last = max(max(p.start for p in schedule.phases), max((p.end or 0) for p in schedule.phases))
    return max(10000, int(last * 1.25))


def format_table(schedule: BlendSchedule, starts, target, realized) -> str:
    header = ["window start"] + [f"{name} target/realized" for name in schedule.sources]
    rows = [[str(int(s))] + [f"{t * 100:6.2f}% / {r * 100:6.2f}%" for t, r in zip(tr, rr)]
            for s, tr, rr in zip(starts, target, realized)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def plot(schedule: BlendSchedule, starts, target, realized, window: int, num_samples: int, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    # one extra point at the end so the last window is drawn to its right edge
    x = numpy.append(numpy.asarray(starts), num_samples)
    realized = numpy.vstack([realized, realized[-1:]])
    target = numpy.vstack([target, target[-1:]])
    for k, name in enumerate(schedule.sources):
        line, = ax.step(x, realized[:, k], where="post", label=f"{name} realized")
        ax.step(x, target[:, k], where="post", linestyle="--", color=line.get_color(), label=f"{name} target")
    for phase in schedule.phases[1:]:
        ax.axvline(phase.start, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("global sample index")
    ax.set_ylabel(f"share per window of {window} samples")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("blend schedule: target vs realized mix")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def inspect_schedule(path: str, num_samples: Optional[int] = None, window: Optional[int] = None,
                     out: Optional[str] = None) -> str:
    schedule = BlendSchedule.load(path)
    num_samples = num_samples or default_num_samples(schedule)
    window = window or max(1, num_samples // 20)
    dataset_index, _ = build_blend_indices(schedule, num_samples)
    realized = realized_mix(dataset_index, len(schedule.sources), window)
    target = target_mix(schedule, num_samples, window)
    starts = numpy.arange(0, num_samples, window)
    counts = numpy.bincount(dataset_index.astype(numpy.int64), minlength=len(schedule.sources))
    totals = schedule.cumulative_targets([num_samples])[0]
    summary = ", ".join(f"{name}: {c} drawn / {t:.1f} target" for name, c, t in zip(schedule.sources, counts, totals))
    text = (f"{path}: {num_samples} samples, window {window}\n"
            f"{format_table(schedule, starts, target, realized)}\ntotals: {summary}")
    if out:
        plot(schedule, starts, target, realized, window, num_samples, out)
        text += f"\nplot: {out}"
    return text


def _run(args: argparse.Namespace) -> int:
    try:
        print(inspect_schedule(args.schedule, args.num_samples, args.window, args.out))
    except (ScheduleError, ValueError) as e:
        print(f"synpro blend inspect: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing schedule, an unwritable --out
        print(f"synpro blend inspect: error: {e.filename or args.schedule}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_inspect_parser(blend_sub) -> None:
    """Adds `inspect` under `synpro blend` (blending/cli.py)."""
    p = blend_sub.add_parser("inspect", help="print (and plot) target vs realized mix per window")
    p.add_argument("schedule", help="schedule file (.json, .yaml)")
    p.add_argument("--num-samples", type=_positive_int, default=None,
                   help="samples to build (default: last phase boundary + 25%%, at least 10000)")
    p.add_argument("--window", type=_positive_int, default=None, help="samples per row (default: num-samples/20)")
    p.add_argument("--out", default=None, help="write a PNG plot here")
    p.set_defaults(func=_run)
