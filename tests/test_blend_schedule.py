"""BlendSchedule: file round trips, validation errors, extension."""
import json
import math

import numpy
import pytest
import yaml

from synpro_megatron.blending import BlendSchedule, Phase, ScheduleError

GOOD = {
    "sources": ["organic", "round1"],
    "phases": [
        {"start": 0, "weights": {"organic": 1.0}},
        {"start": 1000, "weights": {"organic": 0.9, "round1": 0.1}, "end_weights": {"organic": 0.5, "round1": 0.5}},
        {"start": 3000, "weights": {"organic": 3, "round1": 1}},
    ],
}


def test_round_trip_json_and_yaml(tmp_path):
    schedule = BlendSchedule.from_dict(GOOD)
    for name in ("s.json", "s.yaml", "s.yml"):
        path = tmp_path / name
        schedule.save(path)
        loaded = BlendSchedule.load(path)
        assert loaded == schedule
        assert loaded.to_dict() == schedule.to_dict()
    assert json.loads((tmp_path / "s.json").read_text()) == GOOD
    assert yaml.safe_load((tmp_path / "s.yaml").read_text()) == GOOD
    # save leaves no temporary files behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.yaml", "s.yml"]


def test_missing_source_weight_is_zero_and_weights_are_relative():
    schedule = BlendSchedule.from_dict(GOOD)
    t = schedule.cumulative_targets([1000, 3000, 3004])
    assert t[0].tolist() == [1000.0, 0.0]  # phase 0: round1 missing -> weight 0
    # linear phase: the integral of a ramp 0.1 -> 0.5 over 2000 samples is 0.3 * 2000
    assert math.isclose(t[1][1], 600.0) and math.isclose(t[1][0], 1000 + 1400.0)
    # {"organic": 3, "round1": 1} -> 75 % / 25 %
    assert numpy.allclose(t[2] - t[1], [3.0, 1.0])


def _with(phases=None, sources=None):
    return {"sources": sources or ["a", "b"], "phases": phases}


BAD = [
    ("negative", _with([{"start": 0, "weights": {"a": 1}}, {"start": 5, "weights": {"a": 1, "b": -0.5}}]),
     ["phases[1].weights['b']", "negative"]),
    ("nan", _with([{"start": 0, "weights": {"a": float("nan"), "b": 1}}]), ["phases[0].weights['a']", "not finite"]),
    ("inf", _with([{"start": 0, "weights": {"a": 1, "b": float("inf")}}]), ["phases[0].weights['b']", "not finite"]),
    ("nan end", _with([{"start": 0, "weights": {"a": 1}, "end_weights": {"a": float("nan")}, "end": 9}]),
     ["phases[0].end_weights['a']", "not finite"]),
    ("all zero", _with([{"start": 0, "weights": {"a": 0, "b": 0.0}}]), ["phases[0].weights", "all weights are zero"]),
    ("empty weights", _with([{"start": 0, "weights": {}}]), ["phases[0].weights", "all weights are zero"]),
    ("all zero end", _with([{"start": 0, "weights": {"a": 1}}, {"start": 5, "weights": {"a": 1}, "end_weights": {"b": 0}, "end": 9}]),
     ["phases[1].end_weights", "all weights are zero"]),
    ("starts before previous", _with([{"start": 0, "weights": {"a": 1}}, {"start": 10, "weights": {"b": 1}},
                                      {"start": 5, "weights": {"a": 1}}]), ["phases[2].start", "phases[1].start"]),
    ("same start", _with([{"start": 0, "weights": {"a": 1}}, {"start": 0, "weights": {"b": 1}}]), ["phases[1].start"]),
    ("first not at 0", _with([{"start": 7, "weights": {"a": 1}}]), ["phases[0].start", "must start at 0"]),
    ("negative start", _with([{"start": -1, "weights": {"a": 1}}]), ["phases[0].start"]),
    ("float start", _with([{"start": 0, "weights": {"a": 1}}, {"start": 2.5, "weights": {"a": 1}}]), ["phases[1].start", "integer"]),
    ("unknown source", _with([{"start": 0, "weights": {"a": 1, "c": 1}}]), ["phases[0].weights", "unknown source 'c'"]),
    ("unknown end source", _with([{"start": 0, "weights": {"a": 1}, "end_weights": {"z": 1}, "end": 4}]),
     ["phases[0].end_weights", "unknown source 'z'"]),
    ("linear last without end", _with([{"start": 0, "weights": {"a": 1}}, {"start": 5, "weights": {"a": 1}, "end_weights": {"b": 1}}]),
     ["phases[1].end", "last phase is linear"]),
    ("end before start", _with([{"start": 0, "weights": {"a": 1}}, {"start": 5, "weights": {"a": 1}, "end_weights": {"b": 1}, "end": 5}]),
     ["phases[1].end"]),
    ("end without ramp", _with([{"start": 0, "weights": {"a": 1}, "end": 5}]), ["phases[0].end", "linear"]),
    ("weight not a number", _with([{"start": 0, "weights": {"a": "1"}}]), ["phases[0].weights['a']", "number"]),
    ("weights not a mapping", _with([{"start": 0, "weights": [1, 2]}]), ["phases[0].weights", "mapping"]),
    ("missing weights", _with([{"start": 0}]), ["phases[0].weights", "missing"]),
    ("missing start", _with([{"weights": {"a": 1}}]), ["phases[0].start", "missing"]),
    ("typo key", _with([{"start": 0, "weights": {"a": 1}, "end_weight": {"b": 1}}]), ["phases[0]", "end_weight"]),
    ("no phases", _with([]), ["phases", "at least one"]),
    ("duplicate source", _with([{"start": 0, "weights": {"a": 1}}], sources=["a", "a"]), ["sources[1]", "duplicate"]),
    ("no sources key", {"phases": []}, ["sources", "missing"]),
]


@pytest.mark.parametrize("case,d,needles", BAD, ids=[c for c, _, _ in BAD])
def test_bad_schedule_names_the_field(case, d, needles):
    with pytest.raises(ScheduleError) as err:
        BlendSchedule.from_dict(d)
    for needle in needles:
        assert needle in str(err.value), (case, str(err.value))


@pytest.mark.parametrize("case,d,needles", BAD[:6], ids=[c for c, _, _ in BAD[:6]])
def test_bad_schedule_file_error_names_the_file(tmp_path, case, d, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ScheduleError) as err:
        BlendSchedule.load(path)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_unparsable_files_name_the_file(tmp_path):
    bad_json = tmp_path / "s.json"
    bad_json.write_text('{"sources": ["a"], "phases": [')
    with pytest.raises(ScheduleError, match="s.json: not valid JSON"):
        BlendSchedule.load(bad_json)
    bad_yaml = tmp_path / "s.yaml"
    bad_yaml.write_text("sources: [a\nphases: {")
    with pytest.raises(ScheduleError, match="s.yaml: not valid YAML"):
        BlendSchedule.load(bad_yaml)
    with pytest.raises(ScheduleError, match="missing.json: cannot read"):
        BlendSchedule.load(tmp_path / "missing.json")


def test_with_phase_adds_sources_and_validates():
    schedule = BlendSchedule.from_dict(GOOD)
    extended = schedule.with_phase(5000, {"organic": 0.5, "round2": 0.5}, end_weights={"round1": 1}, end=9000)
    assert extended.sources == ("organic", "round1", "round2")
    assert extended.phases[:3] == schedule.phases
    assert extended.phases[3] == Phase(5000, {"organic": 0.5, "round2": 0.5}, {"round1": 1}, 9000)
    assert schedule.sources == ("organic", "round1")  # the original is untouched
    with pytest.raises(ScheduleError, match=r"phases\[3\].start"):
        schedule.with_phase(3000, {"organic": 1})
    with pytest.raises(ScheduleError, match=r"phases\[3\].weights\['organic'\].*negative"):
        schedule.with_phase(4000, {"organic": -1})
    with pytest.raises(ScheduleError, match=r"phases\[3\].end"):
        schedule.with_phase(4000, {"organic": 1}, end_weights={"round1": 1})  # linear last phase needs end


def test_linear_last_phase_holds_end_weights_after_end():
    schedule = BlendSchedule.from_dict(_with([{"start": 0, "weights": {"a": 1}, "end_weights": {"b": 1}, "end": 100}]))
    t = schedule.cumulative_targets([100, 200])
    assert numpy.allclose(t[0], [50, 50])
    assert numpy.allclose(t[1] - t[0], [0, 100])
