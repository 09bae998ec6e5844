"""build_blend_indices against megatron-core's C++ helper, the fallback, and the schedule."""
import warnings

import numpy
import pytest
from megatron.core.datasets import helpers as megatron_helpers
from megatron.core.datasets.utils import normalize

from synpro_megatron.blending import BlendSchedule, Phase, build_blend_indices, have_extension
from synpro_megatron.blending import indices as indices_module


def megatron_indices(weights, size):
    """What Megatron's BlendedDataset computes for these weights and size."""
    dataset_index = numpy.zeros(size, dtype=numpy.int16)
    dataset_sample_index = numpy.zeros(size, dtype=numpy.int64)
    megatron_helpers.build_blending_indices(
        dataset_index, dataset_sample_index, normalize(weights), len(weights), size, False
    )
    return dataset_index, dataset_sample_index


def names(k):
    return [f"src{i}" for i in range(k)]


def random_weights(rng, sources, zero_share=0.3):
    while True:
        w = {n: float(rng.random() * 10 ** rng.uniform(-2, 1)) for n in sources if rng.random() > zero_share}
        if w:
            return w


def random_schedule(rng, num_samples, max_sources=10, max_phases=6, num_sources=None):
    k = num_sources or int(rng.integers(2, max_sources + 1))
    sources = names(k)
    starts = sorted({0, *rng.integers(1, max(2, num_samples), int(rng.integers(0, max_phases))).tolist()})
    phases = []
    for i, start in enumerate(starts):
        last = i == len(starts) - 1
        if rng.random() < 0.5:  # linear ramp; a last one (or some others) with an explicit end
            end = start + int(rng.integers(1, num_samples)) if (last or rng.random() < 0.3) else None
            phases.append(Phase(start, random_weights(rng, sources), random_weights(rng, sources), end))
        else:
            phases.append(Phase(start, random_weights(rng, sources)))
    return BlendSchedule(tuple(sources), tuple(phases))


def counts_per_prefix(dataset_index, k):
    onehot = numpy.zeros((dataset_index.shape[0], k))
    onehot[numpy.arange(dataset_index.shape[0]), dataset_index] = 1
    return numpy.cumsum(onehot, axis=0)


def test_constant_schedule_equals_megatron_helper():
    rng = numpy.random.default_rng(1234)
    for trial in range(300):
        k = int(rng.integers(2, 11))
        size = int(rng.integers(1, 20000)) if trial % 10 else int(rng.integers(1, 20))
        weights = (rng.random(k) * 10 ** rng.uniform(-3, 2, k)).tolist()
        if trial % 7 == 0:
            weights = [1.0] * k  # exact ties everywhere: ties must go to the lowest index
        schedule = BlendSchedule.constant(dict(zip(names(k), weights)))
        ours = build_blend_indices(schedule, size)
        theirs = megatron_indices(weights, size)
        assert ours[0].dtype == numpy.int16 and ours[1].dtype == numpy.int64
        assert ours[0].tobytes() == theirs[0].tobytes(), (trial, k, size)
        assert ours[1].tobytes() == theirs[1].tobytes(), (trial, k, size)


def test_python_fallback_equals_megatron_helper():
    rng = numpy.random.default_rng(7)
    for _ in range(20):
        k = int(rng.integers(2, 11))
        size = int(rng.integers(1, 3000))
        weights = (rng.random(k) + 0.01).tolist()
        ours = build_blend_indices(BlendSchedule.constant(dict(zip(names(k), weights))), size, backend="python")
        theirs = megatron_indices(weights, size)
        assert ours[0].tobytes() == theirs[0].tobytes() and ours[1].tobytes() == theirs[1].tobytes()


def test_cpp_and_fallback_are_byte_identical_on_random_schedules():
    assert have_extension(), "synpro_megatron._blend is not built: run `python setup.py build_ext --inplace`"
    rng = numpy.random.default_rng(99)
    for trial in range(40):
        num_samples = int(rng.integers(1, 4000))
        schedule = random_schedule(rng, num_samples, max_sources=12 if trial % 4 == 0 else 10)
        sizes = None
        if trial % 3 == 0:
            sizes = {n: int(rng.integers(1, 50)) for n in schedule.sources if rng.random() < 0.5}
        cpp = build_blend_indices(schedule, num_samples, sizes, backend="cpp")
        py = build_blend_indices(schedule, num_samples, sizes, backend="python")
        assert cpp[0].tobytes() == py[0].tobytes(), (trial, schedule)
        assert cpp[1].tobytes() == py[1].tobytes(), (trial, schedule)


def test_every_prefix_tracks_the_cumulative_target():
    rng = numpy.random.default_rng(2024)
    worst = 0.0
    for _ in range(80):
        num_samples = int(rng.integers(50, 8000))
        schedule = random_schedule(rng, num_samples)
        dataset_index, dataset_sample_index = build_blend_indices(schedule, num_samples)
        k = len(schedule.sources)
        counts = counts_per_prefix(dataset_index, k)
        target = schedule.cumulative_targets(numpy.arange(1, num_samples + 1))
        worst = max(worst, float(numpy.abs(counts - target).max()))
        # each source is read sequentially: its j-th draw is its sample j
        for source in range(k):
            drawn = dataset_sample_index[dataset_index == source]
            assert numpy.array_equal(drawn, numpy.arange(drawn.shape[0]))
    assert worst <= 2.0, worst


def test_zero_weight_sources_are_never_drawn_in_their_phase():
    schedule = BlendSchedule.from_dict({
        "sources": ["a", "b", "c"],
        "phases": [{"start": 0, "weights": {"b": 1, "c": 1}},
                   {"start": 500, "weights": {"a": 1}},
                   {"start": 900, "weights": {"c": 1}, "end_weights": {"a": 1}, "end": 1200}],
    })
    dataset_index, _ = build_blend_indices(schedule, 1300)
    assert set(dataset_index[:500].tolist()) == {1, 2}
    assert set(dataset_index[500:900].tolist()) == {0}
    assert set(dataset_index[900:].tolist()) == {0, 2}


def test_prefix_stability_under_extension():
    rng = numpy.random.default_rng(5)
    for trial in range(40):
        num_samples = int(rng.integers(100, 5000))
        schedule = random_schedule(rng, num_samples)
        last = schedule.phases[-1].start
        cut = int(rng.integers(last + 1, last + num_samples))
        new_weights = random_weights(rng, list(schedule.sources) + ["new_round"], zero_share=0.5)
        if rng.random() < 0.5:
            extended = schedule.with_phase(cut, new_weights, random_weights(rng, schedule.sources), cut + 500)
        else:
            extended = schedule.with_phase(cut, new_weights)
        total = cut + int(rng.integers(0, 2000))
        before = build_blend_indices(schedule, total)
        after = build_blend_indices(extended, total)
        n = min(cut, total)
        assert before[0][:n].tobytes() == after[0][:n].tobytes(), trial
        assert before[1][:n].tobytes() == after[1][:n].tobytes(), trial
        if "new_round" in new_weights and total > cut + 100:
            assert (after[0][cut:] == extended.sources.index("new_round")).any()


def test_wrap_around_with_source_sizes():
    schedule = BlendSchedule.constant({"organic": 0.7, "round1": 0.3})
    plain = build_blend_indices(schedule, 1000)
    for backend in ("cpp", "python") if have_extension() else ("python",):
        wrapped = build_blend_indices(schedule, 1000, {"round1": 7}, backend=backend)
        assert numpy.array_equal(wrapped[0], plain[0])  # the choice of source does not change
        organic, synthetic = wrapped[0] == 0, wrapped[0] == 1
        assert numpy.array_equal(wrapped[1][organic], plain[1][organic])  # organic does not wrap
        assert numpy.array_equal(wrapped[1][synthetic], numpy.arange(synthetic.sum()) % 7)
        as_list = build_blend_indices(schedule, 1000, [None, 7], backend=backend)
        assert as_list[1].tobytes() == wrapped[1].tobytes()
    with pytest.raises(ValueError, match="unknown sources"):
        build_blend_indices(schedule, 10, {"round9": 3})
    with pytest.raises(ValueError, match="round1"):
        build_blend_indices(schedule, 10, {"round1": -3})


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    schedule = BlendSchedule.constant({"a": 2.0, "b": 1.0})
    expected = megatron_indices([2.0, 1.0], 500)
    monkeypatch.setattr(indices_module, "_blend", None)
    monkeypatch.setattr(indices_module, "_warned_fallback", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = build_blend_indices(schedule, 500)
        second = build_blend_indices(schedule, 500)
    fallback_warnings = [w for w in caught if "not built" in str(w.message)]
    assert len(fallback_warnings) == 1
    for result in (first, second):
        assert result[0].tobytes() == expected[0].tobytes() and result[1].tobytes() == expected[1].tobytes()
    with pytest.raises(RuntimeError, match="not built"):
        build_blend_indices(schedule, 10, backend="cpp")


def test_edge_sizes():
    schedule = BlendSchedule.constant({"a": 1.0})
    empty = build_blend_indices(schedule, 0)
    assert empty[0].shape == (0,) and empty[1].shape == (0,)
    one = build_blend_indices(schedule, 5)
    assert one[0].tolist() == [0] * 5 and one[1].tolist() == list(range(5))
    with pytest.raises(ValueError, match="num_samples"):
        build_blend_indices(schedule, -1)


def test_many_sources_use_the_generic_loop_identically():
    """K > 12 runs the C++ loop without compile-time K: still Megatron's bytes and the fallback's."""
    assert have_extension(), "synpro_megatron._blend is not built: run `python setup.py build_ext --inplace`"
    rng = numpy.random.default_rng(3)
    for k in (13, 17, 25):
        weights = (rng.random(k) + 0.01).tolist()
        ours = build_blend_indices(BlendSchedule.constant(dict(zip(names(k), weights))), 5000, backend="cpp")
        theirs = megatron_indices(weights, 5000)
        assert ours[0].tobytes() == theirs[0].tobytes() and ours[1].tobytes() == theirs[1].tobytes()
        schedule = random_schedule(rng, 2000, num_sources=k)
        cpp = build_blend_indices(schedule, 2000, backend="cpp")
        py = build_blend_indices(schedule, 2000, backend="python")
        assert cpp[0].tobytes() == py[0].tobytes() and cpp[1].tobytes() == py[1].tobytes()
