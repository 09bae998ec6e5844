"""Plateau detector on synthetic loss curves."""
import json
import math
import random

import pytest

from synpro_megatron.loop.plateau import PlateauConfig, PlateauDetector, detect_plateau, eval_series


def evals(values, start=10, every=10, metric="reference_loss"):
    return [{"kind": "eval", "step": start + i * every, metric: v} for i, v in enumerate(values)]


CFG = PlateauConfig(window=3, rel_threshold=0.01, patience=2)


def test_flat_curve_is_a_plateau():
    d = detect_plateau(evals([3.0] * 8), CFG)
    assert d.plateau
    assert d.rel_improvement == 0.0
    assert d.flat_count == 5  # evaluations 4..8 each compare with 3 evaluations earlier
    assert d.step == 80 and d.num_evals == 8


def test_falling_curve_is_not():
    d = detect_plateau(evals([5.0 * math.exp(-i / 10) + 2 for i in range(12)]), CFG)
    assert not d.plateau
    assert d.flat_count == 0
    assert d.rel_improvement > 0.05
    assert "improving" in d.reason


def test_too_few_evaluations():
    d = detect_plateau(evals([3.0] * 4), CFG)  # needs window + patience = 5
    assert not d.plateau and "need 5" in d.reason


def test_noisy_flat_curve_plateaus_and_noisy_fall_does_not():
    rng = random.Random(0)
    flat = [3.0 + rng.gauss(0, 0.01) for _ in range(20)]
    falling = [3.0 - 0.06 * i + rng.gauss(0, 0.01) for i in range(20)]
    for smoothing in ("ema", "mean"):
        cfg = PlateauConfig(smoothing=smoothing, ema_alpha=0.3, mean_window=4, window=4, rel_threshold=0.01,
                            patience=3)
        assert detect_plateau(evals(flat), cfg).plateau, smoothing
        assert not detect_plateau(evals(falling), cfg).plateau, smoothing


def test_smoothing_absorbs_a_single_lucky_evaluation():
    # one noisy low reading resets the patience count of the raw series, not of the smoothed one
    values = [3.0] * 8 + [2.95]
    raw = PlateauConfig(window=1, rel_threshold=0.01, patience=2, smoothing="mean", mean_window=1)
    ema = PlateauConfig(window=3, rel_threshold=0.01, patience=2, smoothing="ema", ema_alpha=0.3)
    mean = PlateauConfig(window=3, rel_threshold=0.01, patience=2, smoothing="mean", mean_window=4)
    assert not detect_plateau(evals(values), raw).plateau
    d = detect_plateau(evals(values), ema)
    assert d.plateau and d.smoothed == pytest.approx(0.3 * 2.95 + 0.7 * 3.0)
    assert detect_plateau(evals(values), mean).plateau


def test_late_drop_ends_the_plateau():
    values = [3.0] * 8 + [2.7, 2.4, 2.1]
    assert detect_plateau(evals(values[:8]), CFG).plateau
    d = detect_plateau(evals(values), CFG)
    assert not d.plateau and d.flat_count == 0


def test_only_evaluations_after_the_refresh_count():
    values = [3.0] * 10 + [2.5, 2.2, 2.0]  # the last three come after a refresh at step 100
    d = detect_plateau(evals(values), CFG, refresh_step=100)
    assert d.num_evals == 3 and not d.plateau and d.refresh_step == 100


def test_min_steps_after_refresh():
    cfg = PlateauConfig(window=2, rel_threshold=0.01, patience=2, min_steps_after_refresh=100)
    e = evals([3.0] * 6, start=60)  # steps 60..110, refresh at 50
    d = detect_plateau(e, cfg, refresh_step=50)
    assert not d.plateau and "only 60 of 100 steps" in d.reason
    assert detect_plateau(e, cfg, refresh_step=50, current_step=150).plateau


def test_duplicate_steps_after_resume_keep_the_last_line():
    e = evals([3.0, 2.0, 1.0]) + [{"kind": "eval", "step": 30, "reference_loss": 5.0}]
    assert eval_series(e, "reference_loss") == [(10, 3.0), (20, 2.0), (30, 5.0)]


def test_train_lines_and_other_metric_are_ignored():
    e = evals([3.0] * 8, metric="heldout_loss") + [{"kind": "train", "step": 5, "lm_loss": 1.0}]
    assert detect_plateau(e, CFG).num_evals == 0
    assert detect_plateau(e, PlateauConfig(metric="heldout_loss", window=3, patience=2)).plateau


def test_non_finite_loss_is_not_a_plateau():
    d = detect_plateau(evals([3.0] * 7 + [float("nan")]), CFG)
    assert not d.plateau and "non-finite" in d.reason


def test_decision_is_json_with_its_numbers():
    d = detect_plateau(evals([3.0] * 8), CFG).to_dict()
    json.dumps(d)
    for key in ("plateau", "reason", "smoothed", "smoothed_before", "rel_improvement", "flat_count", "patience",
                "rel_threshold", "window", "step", "refresh_step"):
        assert key in d


def test_detector_reads_metrics_file_with_torn_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    lines = [json.dumps(r) for r in evals([3.0] * 8)]
    p.write_text("\n".join(lines) + '\n{"kind": "eval", "st')
    assert PlateauDetector(CFG).decide_from_file(str(p)).plateau
    p.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        PlateauDetector(CFG).decide_from_file(str(p))


@pytest.mark.parametrize("field,value", [("window", 0), ("patience", 0), ("smoothing", "median"),
                                         ("ema_alpha", 0.0), ("metric", "lm_loss"),
                                         ("min_steps_after_refresh", -1)])
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"plateau.{field}"):
        PlateauConfig(**{field: value}).validate()
