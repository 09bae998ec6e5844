"""Multiple-choice evaluation: request construction, accuracy with oracle and random scorers, a real
checkpoint end to end (slow)."""
import argparse
import json
import math
import os
import subprocess
import sys

import numpy
import pytest

from synpro_megatron.eval.cli import register_cli
from synpro_megatron.eval.multiple_choice import (MC_TASKS, CheckpointScorer, default_reference_path,
                                                  evaluate_multiple_choice, format_table, load_mc_examples)


@pytest.fixture(scope="module")
def examples():
    return load_mc_examples()


def test_loads_every_multiple_choice_task(examples):
    counts = {}
    for ex in examples:
        counts[ex.task] = counts.get(ex.task, 0) + 1
    assert set(counts) == set(MC_TASKS)  # gsm8k / lambada_openai have no choices
    assert counts["boolq"] == 400 and counts["copa"] == 100
    assert {ex.num_choices for ex in examples if ex.task.startswith("arc")} == {4}


def test_gold_request_rebuilds_the_reference_text(examples):
    """context + continuation of the gold choice is exactly the record's `text`, for every task
    (WinoGrande: the option fills the context, the shared answer is the continuation)."""
    with open(default_reference_path(), encoding="utf-8") as f:
        text = {r["id"]: r["text"] for r in map(json.loads, f)}
    for ex in examples:
        ctx, cont = ex.requests[ex.gold]
        assert ctx + cont == text[ex.id]
        assert not ctx.endswith(" ")  # the space belongs to the continuation's first BPE token
    wino = next(ex for ex in examples if ex.task == "winogrande")
    assert len({cont for _, cont in wino.requests}) == 1 and len({ctx for ctx, _ in wino.requests}) == 2


def test_filters_and_errors(tmp_path):
    few = load_mc_examples(tasks=["copa", "winogrande"], limit_per_task=3)
    assert sorted(ex.task for ex in few) == ["copa"] * 3 + ["winogrande"] * 3
    assert [ex.id for ex in few if ex.task == "copa"] == ["copa-00000", "copa-00001", "copa-00002"]  # file order
    with pytest.raises(ValueError, match=r"no multiple-choice examples for task\(s\) \['gsm8k'\]"):
        load_mc_examples(tasks=["gsm8k"])
    bad = tmp_path / "ref.jsonl"
    rec = {"id": "x", "task": "copa", "prompt": "p", "answer": "b", "text": "p b", "choices": ["a", "b"], "gold": 2}
    bad.write_text(json.dumps(dict(rec, gold=1)) + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"ref.jsonl:2: field 'gold'"):
        load_mc_examples(str(bad))


class GoldScorer:
    """A 'model' that prefers the gold answers: high log-likelihood for the gold pair only."""

    def __init__(self, examples):
        self.gold = {ex.requests[ex.gold] for ex in examples}

    def loglik(self, contexts, continuations):
        return [-1.0 if (c, k) in self.gold else -50.0 for c, k in zip(contexts, continuations)]


class RandomScorer:
    """Random log-likelihoods; `per_token` draws per-token values (so acc_norm is the unbiased one)."""

    def __init__(self, seed, per_token=False):
        self.rng = numpy.random.default_rng(seed)
        self.per_token = per_token

    def num_tokens(self, contexts, continuations):
        return [len(k.split()) for k in continuations]

    def loglik(self, contexts, continuations):
        draws = self.rng.uniform(-8.0, -0.5, len(continuations))
        if self.per_token:
            return [d * n for d, n in zip(draws, self.num_tokens(contexts, continuations))]
        return list(draws)


def test_gold_preferring_scorer_gets_everything_right(examples):
    result = evaluate_multiple_choice(GoldScorer(examples), examples, progress=False)
    assert result["macro_acc"] == 1.0 and result["macro_acc_norm"] == 1.0
    assert all(t["acc"] == 1.0 and t["acc_norm"] == 1.0 for t in result["tasks"].values())
    assert result["num_examples"] == len(examples) and result["length_unit"] == "bytes"


@pytest.mark.parametrize("per_token,key", [(False, "acc"), (True, "acc_norm")])
def test_random_scorer_is_at_chance(examples, per_token, key):
    result = evaluate_multiple_choice(RandomScorer(7, per_token), examples, progress=False)
    assert result["length_unit"] == "tokens"
    for task, t in result["tasks"].items():
        p = 1.0 / t["num_choices"]
        band = 4.0 * math.sqrt(p * (1 - p) / t["n"])  # binomial, 4 sigma
        assert abs(t[key] - p) < band, f"{task}: {key} {t[key]:.3f} vs chance {p:.3f} +- {band:.3f}"
        assert t["chance"] == pytest.approx(p)
    table = format_table(result)
    assert "macro average" in table and "boolq" in table


def test_scorer_contract_is_checked(examples):
    class Short:
        def loglik(self, contexts, continuations):
            return [0.0]

    with pytest.raises(ValueError, match="returned 1 scores"):
        evaluate_multiple_choice(Short(), examples[:3], progress=False)


# ----------------------------------------------------------------------------------------- real checkpoint
TINY = ["--config", "tiny", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--ffn-hidden-size", "128", "--seq-len", "64", "--max-steps", "2", "--global-batch", "2", "--micro-batch", "2",
        "--eval-interval", "0", "--save-interval", "0"]


def synpro(*args, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "synpro_megatron.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture
def own_process_group():
    """Loading a checkpoint in-process creates a gloo group and Megatron's parallel state; tear
    down what this test created, so later tests find the process as it was."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    had_pg, had_mp = dist.is_initialized(), ps.model_parallel_is_initialized()
    yield
    if not had_mp and ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if not had_pg and dist.is_initialized():
        dist.destroy_process_group()


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="synpro")
    register_cli(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.slow
def test_checkpoint_scorer_on_a_tiny_trained_model(tmp_path, capsys, own_process_group):
    from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

    data, run = tmp_path / "organic", tmp_path / "run"
    synpro("prepare", "--input", DEFAULT_WEB_SAMPLE, "--output", str(data), "--limit", "200", "--workers", "1")
    synpro("pretrain", "--data", str(data), "--run-dir", str(run), *TINY)
    assert (run / "checkpoints" / "latest").exists()

    # the CLI: table on stdout, JSON output, a line in RUN_DIR/eval_mc.jsonl with the step
    out = tmp_path / "mc.json"
    assert run_cli(["eval", "--checkpoint", str(run), "--tasks", "copa", "winogrande", "--limit-per-task", "5",
                    "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "macro average" in stdout and "(step 2)" in stdout
    record = json.loads(out.read_text())
    assert record["step"] == 2 and set(record["tasks"]) == {"copa", "winogrande"}
    logged = [json.loads(line) for line in (run / "eval_mc.jsonl").read_text().splitlines()]
    assert len(logged) == 1 and logged[0]["macro_acc"] == record["macro_acc"]
    assert logged[0]["checkpoint"] == os.path.join("checkpoints", "iter_0000002")

    # every task: accuracies in [0, 1], scores are real log-probabilities
    scorer = CheckpointScorer(str(run), batch_size=8)
    examples = load_mc_examples(limit_per_task=5)
    result = evaluate_multiple_choice(scorer, examples, progress=False, return_predictions=True)
    assert result["length_unit"] == "tokens" and set(result["tasks"]) == set(MC_TASKS)
    for t in result["tasks"].values():
        assert 0.0 <= t["acc"] <= 1.0 and 0.0 <= t["acc_norm"] <= 1.0 and t["n"] == 5
    scores = [s for p in result["predictions"] for s in p["loglik"]]
    assert all(math.isfinite(s) and s < 0 for s in scores)
    # batching and length-sorting do not change a pair's score
    ctx, cont = zip(*examples[0].requests)
    one_by_one = [scorer.loglik([c], [k])[0] for c, k in zip(ctx, cont)]
    assert scorer.loglik(list(ctx), list(cont)) == pytest.approx(one_by_one, rel=1e-4, abs=1e-4)
