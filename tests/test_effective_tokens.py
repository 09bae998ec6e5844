"""Effective-token fit: recovers a known multiplier, handles bad inputs clearly, CLI end to end."""
import argparse
import json
import math
import os

import numpy
import pytest

from synpro_megatron.eval.cli import register_cli
from synpro_megatron.eval.effective_tokens import (EffectiveTokensError, estimate_effective_tokens, fit_loss_curve,
                                                   load_points_table, parse_run_spec, parse_token_count)

# a plausible small-model curve: L(U) = 2.1 + A / U^0.28, 3.5 nats at 100M unique tokens
E, ALPHA = 2.1, 0.28
A = 1.4 * (1e8) ** ALPHA


def true_loss(u):
    return E + A / numpy.asarray(u, dtype=float) ** ALPHA


@pytest.mark.parametrize("seed,num_budgets,multiplier", [(0, 5, 3.7), (1, 6, 5.2), (2, 4, 2.5)])
def test_fit_recovers_known_multiplier(seed, num_budgets, multiplier):
    rng = numpy.random.default_rng(seed)
    budgets = numpy.geomspace(1e8, 3.2e9, num_budgets)
    losses = true_loss(budgets) + rng.normal(0.0, 0.002, num_budgets)  # eval noise
    u_synpro = 3e8
    result = estimate_effective_tokens(list(zip(budgets, losses)), (u_synpro, float(true_loss(multiplier * u_synpro))))
    assert result.multiplier == pytest.approx(multiplier, rel=0.05)
    assert result.fit.alpha == pytest.approx(ALPHA, rel=0.25)
    assert result.fit.E == pytest.approx(E, abs=0.15)
    assert not result.warnings  # k * U lies inside the fitted budgets


def test_noise_free_fit_is_exact_and_inverse_roundtrips():
    budgets = [1e8, 4e8, 1.6e9, 6.4e9]
    fit = fit_loss_curve(budgets, true_loss(budgets))
    assert fit.E == pytest.approx(E, rel=1e-3)
    assert fit.alpha == pytest.approx(ALPHA, rel=1e-3)
    assert fit.A == pytest.approx(A, rel=1e-2)
    for u in (2e8, 1e9):
        assert fit.unique_tokens_for(float(fit.loss(u))) == pytest.approx(u, rel=1e-9)


def test_extrapolation_is_warned_and_flagged():
    budgets = numpy.geomspace(1e8, 8e8, 4)
    with pytest.warns(UserWarning, match="extrapolates"):
        result = estimate_effective_tokens(list(zip(budgets, true_loss(budgets))), (4e8, float(true_loss(4e9))))
    assert result.extrapolated and result.multiplier == pytest.approx(10.0, rel=0.02)


def test_needs_three_budgets_and_a_decreasing_curve():
    with pytest.raises(EffectiveTokensError, match=">= 3 distinct"):
        fit_loss_curve([1e8, 1e8, 4e8], [3.0, 3.01, 2.8])
    with pytest.raises(EffectiveTokensError, match="do not decrease"):
        fit_loss_curve([1e8, 4e8, 1.6e9], [2.8, 2.9, 3.0])
    budgets = [1e8, 4e8, 1.6e9]
    with pytest.raises(EffectiveTokensError, match="asymptote"):
        estimate_effective_tokens(list(zip(budgets, true_loss(budgets))), (1e8, E - 0.1))


def test_input_parsing(tmp_path):
    assert parse_token_count("800M") == 8e8 and parse_token_count("2.2B") == 2.2e9 and parse_token_count("8e8") == 8e8
    assert parse_run_spec("/runs/a:b/rep:800M") == ("/runs/a:b/rep", 8e8)
    assert parse_run_spec("/runs/rep") == ("/runs/rep", None)
    csv_path = tmp_path / "points.csv"
    csv_path.write_text("unique_tokens,loss,label\n100M,3.5,a\n400M,3.1,b\n1.6B,oops,c\n")
    with pytest.raises(ValueError, match=r"points.csv:4: field 'loss'"):
        load_points_table(str(csv_path))
    json_path = tmp_path / "points.json"
    json_path.write_text(json.dumps({"points": [{"unique_tokens": 1e8, "loss": 3.5}, {"loss": 3.0}]}))
    with pytest.raises(ValueError, match=r"points\[1\]: field 'unique_tokens' missing"):
        load_points_table(str(json_path))


def write_run(run_dir, final_loss, tokens=50_000_000):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for i, frac in enumerate((0.25, 0.5, 0.75, 1.0)):
            loss = final_loss + 0.6 * (1 - frac)
            f.write(json.dumps({"kind": "eval", "step": (i + 1) * 100, "consumed_samples": (i + 1) * 800,
                                "tokens": int(tokens * frac), "heldout_loss": loss + 0.05, "reference_loss": loss}) + "\n")


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="synpro")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_end_to_end(tmp_path, capsys):
    budgets = [1e8, 3e8, 9e8, 2.7e9]
    specs = []
    for u in budgets:
        run = tmp_path / f"rep_{int(u / 1e6)}M"
        write_run(str(run), float(true_loss(u)))
        specs += ["--baseline", f"{run}:{int(u)}"]
    write_run(str(tmp_path / "synpro"), float(true_loss(4 * 2e8)))
    out = tmp_path / "et.png"
    synpro = ["--synpro", f"{tmp_path / 'synpro'}:200M"]
    assert run_cli(["effective-tokens", *specs, *synpro, "--out", str(out), "--json", str(tmp_path / "et.json")]) == 0
    assert "multiplier 4.00x" in capsys.readouterr().out
    result = json.loads((tmp_path / "et.json").read_text())
    assert result["multiplier"] == pytest.approx(4.0, rel=1e-3) and result["fit"]["form"] == "L(U) = E + A / U^alpha"
    assert math.isfinite(result["effective_unique_tokens"])
    image = plt_imread(out)
    assert out.stat().st_size > 20_000 and image.shape[0] > 300 and image.std() > 0.05
    # two baselines are not enough: a clear error and exit code 2
    assert run_cli(["effective-tokens", *specs[:4], *synpro]) == 2
    assert "needs baseline runs at >= 3 distinct" in capsys.readouterr().err
    # a run without eval records: the error names the file
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    assert run_cli(["effective-tokens", *specs, "--synpro", f"{tmp_path / 'empty'}:200M"]) == 2
    assert "empty/metrics.jsonl: no eval record with field 'reference_loss'" in capsys.readouterr().err


def plt_imread(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_cli_oracle_fit_and_ratio_vs_repetition(tmp_path, capsys):
    """An oracle run on unique data gives the curve from its own evals; SynPro and repetition runs on
    the same 200M unique tokens are placed on it, and their ratio is the paper's multiplier."""
    oracle = tmp_path / "oracle"
    os.makedirs(oracle)
    with open(oracle / "metrics.jsonl", "w") as f:
        for i, tokens in enumerate(numpy.geomspace(1e8, 3.2e9, 6).astype(int)):
            f.write(json.dumps({"kind": "eval", "step": 100 * (i + 1), "tokens": int(tokens),
                                "reference_loss": float(true_loss(tokens)), "heldout_loss": 9.9}) + "\n")
    write_run(str(tmp_path / "synpro"), float(true_loss(5 * 2e8)))
    write_run(str(tmp_path / "rep"), float(true_loss(1.5 * 2e8)))
    assert run_cli(["effective-tokens", "--oracle", str(oracle), "--synpro", f"{tmp_path / 'synpro'}:200M",
                    "--repetition", f"{tmp_path / 'rep'}:200M", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["multiplier"] == pytest.approx(5.0, rel=1e-3)
    assert result["repetition"]["multiplier"] == pytest.approx(1.5, rel=1e-3)
    assert result["ratio_vs_repetition"] == pytest.approx(5.0 / 1.5, rel=1e-3)
    assert "synpro / rep effective tokens: 3.33x" in capsys.readouterr().out


def test_final_loss_is_last_eval_or_mean_of_last_k(tmp_path):
    from synpro_megatron.eval.effective_tokens import final_eval_loss

    write_run(str(tmp_path / "run"), 3.0)  # reference losses 3.45, 3.3, 3.15, 3.0
    assert final_eval_loss(str(tmp_path / "run")) == pytest.approx(3.0)
    assert final_eval_loss(str(tmp_path / "run"), last_k=2) == pytest.approx(3.075)
    assert final_eval_loss(str(tmp_path / "run"), "heldout_loss") == pytest.approx(3.05)
