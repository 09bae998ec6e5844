"""`synpro blend inspect` and realized_mix."""
import argparse

import numpy

from synpro_megatron import cli
from synpro_megatron.blending import BlendSchedule, build_blend_indices
from synpro_megatron.blending.cli import register_cli
from synpro_megatron.blending.inspect import realized_mix, target_mix

SCHEDULE = {
    "sources": ["organic", "round1"],
    "phases": [
        {"start": 0, "weights": {"organic": 1}},
        {"start": 2000, "weights": {"organic": 0.9, "round1": 0.1}, "end_weights": {"organic": 0.5, "round1": 0.5},
         "end": 6000},
    ],
}


def test_realized_mix_counts_per_window():
    index = numpy.array([0, 1, 1, 0, 2, 2, 2], dtype=numpy.int16)
    mix = realized_mix(index, 3, 3)
    assert mix.shape == (3, 3)
    assert numpy.allclose(mix[0], [1 / 3, 2 / 3, 0]) and numpy.allclose(mix[1], [1 / 3, 0, 2 / 3])
    assert numpy.allclose(mix[2], [0, 0, 1])  # short last window, normalised by its own length


def test_realized_mix_follows_the_target_within_the_tracking_bound():
    schedule = BlendSchedule.from_dict(SCHEDULE)
    num_samples, window = 8000, 400
    index, _ = build_blend_indices(schedule, num_samples)
    realized, target = realized_mix(index, 2, window), target_mix(schedule, num_samples, window)
    assert realized.shape == target.shape == (20, 2)
    # each window's count differs from its target by at most the sum of the two edge deviations (<= 2 each)
    assert numpy.abs(realized - target).max() * window <= 4
    assert numpy.allclose(target.sum(axis=1), 1)


def test_inspect_command_prints_table_and_writes_png(tmp_path, capsys):
    path = tmp_path / "schedule.json"
    BlendSchedule.from_dict(SCHEDULE).save(path)
    png = tmp_path / "mix.png"
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["blend", "inspect", str(path), "--num-samples", "8000", "--window", "1000",
                              "--out", str(png)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "organic target/realized" in lines[1] and "round1 target/realized" in lines[1]
    assert [line.split()[0] for line in lines[2:10]] == [str(s) for s in range(0, 8000, 1000)]
    assert "100.00% / 100.00%" in lines[2]  # organic only at the start
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_reports_bad_schedule(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text('{"sources": ["a"], "phases": [{"start": 3, "weights": {"a": 1}}]}')
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["blend", "inspect", str(path)])
    assert args.func(args) == 2
    assert "bad.json: phases[0].start" in capsys.readouterr().err


def test_inspect_is_registered_with_the_synpro_cli():
    assert "synpro_megatron.blending.cli" in cli.COMMAND_MODULES
    assert cli.build_parser().parse_args(["blend", "inspect", "s.json"]).func.__module__ == "synpro_megatron.blending.inspect"
