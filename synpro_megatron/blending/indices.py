"""Megatron's two blend arrays for a schedule: which source feeds each global sample, and which
sample of that source.

Rule (Megatron's `build_blending_indices`, generalised): at output position s every candidate
source k has the deficit `T_k(max(s,1)) - count_k`; the largest wins (ties -> lowest k); the
winner's next sample index is written and its count goes up. With one constant phase T_k(n) is
`w_k * n` and the arrays equal Megatron's byte for byte.

The C++ extension (`synpro_megatron._blend`, csrc/blend.cpp) does the work; without it a Python
fallback gives byte-identical output (same segment table, same double expressions in the same
order), about 1 us per sample.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy

from synpro_megatron.blending.schedule import BlendSchedule, SegmentTable

try:
    from synpro_megatron import _blend
except ImportError:  # built optionally by setup.py
    _blend = None

_warned_fallback = False
_BLOCK = 1 << 16  # positions per vectorised block in the fallback

SourceSizes = Union[Mapping[str, Optional[int]], Sequence[Optional[int]], None]


def have_extension() -> bool:
    return _blend is not None


def build_blend_indices(
    schedule: BlendSchedule,
    num_samples: int,
    source_sizes: SourceSizes = None,
    backend: str = "auto",
) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Return (dataset_index int16[num_samples], dataset_sample_index int64[num_samples]).

    source_sizes: per source (mapping name -> size, or a sequence in schedule.sources order) the
    number of samples it has; a source with a size wraps around (sample index modulo size, i.e.
    further epochs). None / missing / 0 means the source does not wrap.
    backend: "auto" (C++ if built, else the fallback with a one-time warning), "cpp", "python".
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, numpy.integer)) or num_samples < 0:
        raise ValueError(f"num_samples must be a non-negative integer, got {num_samples!r}")
    table = schedule.segment_table()
    wrap = _wrap_sizes(schedule, source_sizes)
    dataset_index = numpy.empty(int(num_samples), dtype=numpy.int16)
    dataset_sample_index = numpy.empty(int(num_samples), dtype=numpy.int64)
    if num_samples == 0:
        return dataset_index, dataset_sample_index

    if backend not in ("auto", "cpp", "python"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'python', got {backend!r}")
    if backend == "cpp" and _blend is None:
        raise RuntimeError("the C++ extension synpro_megatron._blend is not built "
                           "(run `python setup.py build_ext --inplace` or `pip install -e .`)")
    if backend == "auto" and _blend is None:
        _warn_fallback_once()
    if _blend is not None and backend != "python":
        _blend.build_schedule_indices(
            dataset_index, dataset_sample_index, table.start, table.linear, table.candidate,
            table.weight, table.slope, table.base, wrap,
        )
    else:
        _build_python(dataset_index, dataset_sample_index, table, wrap)
    return dataset_index, dataset_sample_index


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "synpro_megatron._blend (C++) is not built; using the slower Python blend-index builder "
            "(identical output). Build it with `pip install -e .` or `python setup.py build_ext --inplace`.",
            RuntimeWarning,
            stacklevel=3,
        )


def _wrap_sizes(schedule: BlendSchedule, source_sizes: SourceSizes) -> numpy.ndarray:
    K = len(schedule.sources)
    wrap = numpy.zeros(K, dtype=numpy.int64)
    if source_sizes is None:
        return wrap
    if isinstance(source_sizes, Mapping):
        unknown = set(source_sizes) - set(schedule.sources)
        if unknown:
            raise ValueError(f"source_sizes: unknown sources {sorted(unknown)} (sources: {', '.join(schedule.sources)})")
        items = [source_sizes.get(name) for name in schedule.sources]
    else:
        items = list(source_sizes)
        if len(items) != K:
            raise ValueError(f"source_sizes: {len(items)} sizes for {K} sources {list(schedule.sources)}")
    for k, size in enumerate(items):
        if size is None:
            continue
        if isinstance(size, bool) or not isinstance(size, (int, numpy.integer)) or size < 0:
            raise ValueError(f"source_sizes[{schedule.sources[k]!r}]: must be a non-negative integer or None, got {size!r}")
        wrap[k] = size
    return wrap


def _build_python(dataset_index, dataset_sample_index, table: SegmentTable, wrap: numpy.ndarray) -> None:
    """Reference loop: the same expressions as csrc/blend.cpp, evaluated in the same order.

    The per-position part of the target (weight*j or j*(weight + slope*j)) is computed in numpy
    blocks; only the argmax over sources runs in Python.
    """
    N = dataset_index.shape[0]
    K = table.weight.shape[1]
    count = [0] * K
    position = [0] * K
    wrap_at = [int(w) if w > 0 else -1 for w in wrap]
    Q = table.start.shape[0]
    for q in range(Q):
        lo = int(table.start[q])
        if lo >= N:
            break
        hi = min(int(table.start[q + 1]), N) if q + 1 < Q else N
        if not table.candidate[q].any():
            raise ValueError("a segment has no candidate source")
        base = table.base[q].tolist()
        candidate = table.candidate[q].astype(bool).tolist()
        resid = [base[k] - float(count[k]) if candidate[k] else float("-inf") for k in range(K)]
        w = table.weight[q][None, :]
        g = table.slope[q][None, :]
        linear = bool(table.linear[q])
        for b0 in range(lo, hi, _BLOCK):
            b1 = min(b0 + _BLOCK, hi)
            j = numpy.arange(b0 - lo, b1 - lo, dtype=numpy.float64)
            if b0 == 0:
                j[0] = 1.0  # max(s,1): position 0 uses the one-sample target, as Megatron
            j = j[:, None]
            within = (j * (w + g * j)) if linear else (w * j)
            chosen = []
            sample = []
            for row in within.tolist():
                best = 0
                best_error = row[0] + resid[0]
                for k in range(1, K):
                    error = row[k] + resid[k]
                    if error > best_error:
                        best_error = error
                        best = k
                chosen.append(best)
                pos = position[best]
                sample.append(pos)
                pos += 1
                position[best] = 0 if pos == wrap_at[best] else pos
                count[best] += 1
                resid[best] = base[best] - float(count[best])
            dataset_index[b0:b1] = chosen
            dataset_sample_index[b0:b1] = sample


def realized_counts(dataset_index: numpy.ndarray, num_sources: int) -> numpy.ndarray:
    """Samples drawn per source (int64 [num_sources])."""
    return numpy.bincount(numpy.asarray(dataset_index, dtype=numpy.int64), minlength=num_sources)[:num_sources]
