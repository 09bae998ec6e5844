"""Blend-index builder: ours (C++, synpro_megatron._blend) vs megatron-core's C++ helper, side by side.

    python bench/blend_indices.py [--num-samples 100000000] [--repeats 3]

Cases (3 sources):
  * constant weights: megatron-core `build_blending_indices` vs our `build_blend_indices` on the
    one-phase schedule (outputs checked byte-identical);
  * a 5-phase schedule (constant and linear phases): ours only; its ratio is taken against
    Megatron's constant-weight time as the reference (Megatron has no schedule);
  * the Python fallback on a smaller size, for reference;
  * optionally (--scan-sources 8,16,24,40) constant weights with more sources, at --scan-samples.
Reported: best-of-N CPU time, the cases interleaved in each repeat (output allocation included for both), ratio megatron_time / ours
(goal >= 1.0), and the peak memory allocated during a build (tracemalloc) (goal: the two output arrays,
10 bytes/sample, plus O(K)).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
import tracemalloc
import warnings

import numpy

warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine).*")

from megatron.core.datasets import helpers as megatron_helpers  # noqa: E402
from megatron.core.datasets.utils import normalize  # noqa: E402

from synpro_megatron.blending import BlendSchedule, build_blend_indices, have_extension  # noqa: E402

WEIGHTS = {"organic": 0.5, "round1": 0.3, "round2": 0.2}


def five_phase_schedule(n: int) -> BlendSchedule:
    """organic only, ramp in round1, constant, ramp in round2, constant (boundaries at n/5 steps)."""
    s = [0, n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5]
    return BlendSchedule.from_dict({
        "sources": list(WEIGHTS),
        "phases": [
            {"start": s[0], "weights": {"organic": 1}},
            {"start": s[1], "weights": {"organic": 0.9, "round1": 0.1}, "end_weights": {"organic": 0.6, "round1": 0.4}},
            {"start": s[2], "weights": {"organic": 0.6, "round1": 0.4}},
            {"start": s[3], "weights": {"organic": 0.6, "round1": 0.3, "round2": 0.1},
             "end_weights": {"organic": 0.5, "round1": 0.3, "round2": 0.2}},
            {"start": s[4], "weights": WEIGHTS},
        ],
    })


class PeakAllocated:
    """Peak bytes allocated during the block, as traced by tracemalloc.

    numpy reports its buffers to tracemalloc, so this counts the output arrays and our segment
    table; the C++ loops allocate only O(K) (std::vector of K counters; Megatron: a stack array),
    which is not traced. Unlike peak RSS, this does not drop to 0 when freed memory is reused.
    """

    def __enter__(self):
        gc.collect()
        tracemalloc.start()
        return self

    def __exit__(self, *exc):
        _, self.extra_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()


def run_megatron(n: int, raw_weights=None):
    weights = normalize(list(WEIGHTS.values()) if raw_weights is None else raw_weights)
    dataset_index = numpy.zeros(n, dtype=numpy.int16)
    dataset_sample_index = numpy.zeros(n, dtype=numpy.int64)
    megatron_helpers.build_blending_indices(dataset_index, dataset_sample_index, weights, len(weights), n, False)
    return dataset_index, dataset_sample_index


def timed(fn) -> float:
    """CPU time (user + sys, this process) of one call: both builders are single-threaded, so on an
    idle machine it equals wall time, and on this shared VM it is far less noisy than wall time."""
    gc.collect()
    t0 = time.process_time()
    result = fn()
    elapsed = time.process_time() - t0
    del result
    return elapsed


def peak_memory(fn) -> int:
    """A separate traced run (tracemalloc slows Python code, so timings are taken untraced)."""
    with PeakAllocated() as mem:
        result = fn()
        del result
    return mem.extra_bytes


def measure_interleaved(cases: dict, repeats: int):
    """(best time, peak memory) per case; cases alternate within each repeat (the box is shared)."""
    best = {name: float("inf") for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            best[name] = min(best[name], timed(fn))
    return {name: (best[name], peak_memory(fn)) for name, fn in cases.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=float, default=1e8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fallback-samples", type=float, default=1e6, help="size for the Python fallback row (0: skip)")
    parser.add_argument("--scan-sources", default="", help="comma-separated source counts to compare too (constant weights)")
    parser.add_argument("--scan-samples", type=float, default=1e7)
    args = parser.parse_args(argv)
    n = int(args.num_samples)
    if not have_extension():
        print("synpro_megatron._blend is not built (python setup.py build_ext --inplace)", file=sys.stderr)
        return 1

    constant = BlendSchedule.constant(WEIGHTS)
    phased = five_phase_schedule(n)
    rows = []

    # correctness first: our constant-weight output must be Megatron's, byte for byte
    megatron_out, ours_out = run_megatron(n), build_blend_indices(constant, n, backend="cpp")
    identical = all(numpy.array_equal(a, b) for a, b in zip(megatron_out, ours_out))
    del megatron_out, ours_out
    if not identical:
        print("ERROR: constant-weight output differs from megatron-core's", file=sys.stderr)
        return 1
    best = measure_interleaved({
        "megatron": lambda: run_megatron(n),
        "constant": lambda: build_blend_indices(constant, n, backend="cpp"),
        "phased": lambda: build_blend_indices(phased, n, backend="cpp"),
    }, args.repeats)
    (t_meg, m_meg), (t_ours, m_ours), (t_ph, m_ph) = best["megatron"], best["constant"], best["phased"]
    rows.append(("megatron-core build_blending_indices", "constant", n, t_meg, m_meg, None))
    rows.append(("synpro build_blend_indices (C++)", "constant", n, t_ours, m_ours, t_meg / t_ours))
    rows.append(("synpro build_blend_indices (C++)", "5 phases (2 linear)", n, t_ph, m_ph, t_meg / t_ph))

    nf = int(args.fallback_samples)
    if nf > 0:
        ((t_fb, m_fb),) = measure_interleaved(
            {"fallback": lambda: build_blend_indices(five_phase_schedule(nf), nf, backend="python")}, 1).values()
        rows.append(("synpro build_blend_indices (Python fallback)", "5 phases (2 linear)", nf, t_fb, m_fb, None))

    ns = int(args.scan_samples)
    for k in [int(x) for x in args.scan_sources.split(",") if x.strip()]:
        raw = (numpy.random.default_rng(k).random(k) + 0.05).tolist()
        schedule = BlendSchedule.constant({f"source{i}": w for i, w in enumerate(raw)})
        ours_k, theirs_k = build_blend_indices(schedule, ns, backend="cpp"), run_megatron(ns, raw)
        assert all(numpy.array_equal(a, b) for a, b in zip(ours_k, theirs_k)), f"{k} sources: output differs"
        del ours_k, theirs_k
        best_k = measure_interleaved({"megatron": lambda: run_megatron(ns, raw),
                                      "ours": lambda: build_blend_indices(schedule, ns, backend="cpp")}, args.repeats)
        (tm, mm), (to, mo) = best_k["megatron"], best_k["ours"]
        rows.append(("megatron-core build_blending_indices", f"constant, {k} sources", ns, tm, mm, None))
        rows.append(("synpro build_blend_indices (C++)", f"constant, {k} sources", ns, to, mo, tm / to))

    print(f"# blend indices, 3 sources unless noted, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats}; outputs identical to megatron-core: {identical}")
    print("| builder | schedule | samples | CPU time (s) | ns/sample | peak extra memory | bytes/sample | ratio megatron/ours |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, schedule, size, t, mem, ratio in rows:
        ratio_text = f"{ratio:.2f}" if ratio is not None else "–"
        print(f"| {name} | {schedule} | {size:.0e} | {t:.3f} | {t / size * 1e9:.1f} | {mem / 2**20:.0f} MiB "
              f"| {mem / size:.1f} | {ratio_text} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
