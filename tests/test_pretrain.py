"""Pretraining on megatron-core with gloo on CPU: learning, TP/PP equivalence, kill-and-resume.

Each run is a real `synpro pretrain` process (torchrun for several ranks) on the packaged web sample.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from synpro_megatron.data.prepare import PrepareConfig, prepare
from synpro_megatron.pretrain.data import DEFAULT_WEB_SAMPLE

pytestmark = pytest.mark.slow

# A shrunken `tiny` so that a step takes well under a second on two cores.
SMALL = ["--config", "tiny", "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
         "--ffn-hidden-size", "192", "--seq-len", "64", "--micro-batch", "2", "--global-batch", "4",
         "--eval-iters", "2", "--lr-warmup-steps", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "organic"
    prepare(PrepareConfig(input=DEFAULT_WEB_SAMPLE, output=str(out), limit=400, held_out=0.1, workers=1))
    return str(out)


@pytest.fixture(scope="module")
def tp1_baseline(corpus, tmp_path_factory):
    """One TP=1 run of 4 steps (checkpoints at 2 and 4), shared by the tests that compare against it."""
    return run_pretrain(corpus, tmp_path_factory.mktemp("tp1") / "run", *TP1_BASELINE)


TP1_BASELINE = ["--max-steps", "4", "--eval-interval", "2", "--save-interval", "2"]


def run_pretrain(corpus, run_dir, *extra, nproc=None, timeout=900):
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", corpus, "--run-dir", str(run_dir),
           *SMALL, *extra]
    if nproc:
        cmd += ["--nproc-per-node", str(nproc)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return metrics(run_dir)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def losses(records):
    return [(r["kind"], r["step"], r["lm_loss"] if r["kind"] == "train" else (r["heldout_loss"], r["reference_loss"]))
            for r in records]


def assert_same_curves(a, b, rel=1e-5):
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]
    for (kind, step, va), (_, _, vb) in zip(la, lb):
        assert va == pytest.approx(vb, rel=rel), f"{kind} loss differs at step {step}: {va} vs {vb}"


def test_tiny_model_learns(corpus, tmp_path):
    recs = run_pretrain(corpus, tmp_path / "learn", "--max-steps", "20", "--lr", "1e-2", "--min-lr", "1e-3",
                        "--eval-interval", "10",
                        "--save-interval", "0")
    train = [r["lm_loss"] for r in recs if r["kind"] == "train"]
    evals = [r for r in recs if r["kind"] == "eval"]
    assert len(train) == 20 and [e["step"] for e in evals] == [0, 10, 20]
    assert sum(train[-3:]) / 3 < train[0] - 1.0, train
    assert evals[-1]["heldout_loss"] < evals[0]["heldout_loss"] - 1.0
    assert evals[-1]["reference_loss"] < evals[0]["reference_loss"] - 1.0
    assert os.path.isdir(tmp_path / "learn" / "tensorboard")
    assert open(tmp_path / "learn" / "checkpoints" / "latest").read().strip() == "20"


def test_tensor_parallel_matches_single_rank(corpus, tp1_baseline, tmp_path):
    tp2 = run_pretrain(corpus, tmp_path / "tp2", "--max-steps", "4", "--eval-interval", "2", "--save-interval", "0",
                       "--tp", "2")
    assert_same_curves(tp1_baseline, tp2)


def test_tp2_pp2_matches_pp2(corpus, tmp_path):
    pp2 = run_pretrain(corpus, tmp_path / "pp2", "--max-steps", "3", "--eval-interval", "3", "--save-interval", "0",
                       "--pp", "2")
    tp2pp2 = run_pretrain(corpus, tmp_path / "tp2pp2", "--max-steps", "3", "--eval-interval", "3",
                          "--save-interval", "0", "--tp", "2", "--pp", "2")
    assert_same_curves(pp2, tp2pp2)


def test_kill_after_checkpoint_then_resume_gives_same_curve(corpus, tmp_path):
    common = ["--max-steps", "6", "--eval-interval", "3", "--save-interval", "2"]
    whole = run_pretrain(corpus, tmp_path / "whole", *common)

    killed_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", corpus, "--run-dir", str(killed_dir),
           *SMALL, *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(killed_dir / "metrics.jsonl") and any(
                r["kind"] == "train" and r["step"] >= 3 for r in metrics(killed_dir)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert open(killed_dir / "checkpoints" / "latest").read().strip() in ("2", "4")
    assert not os.path.exists(killed_dir / "checkpoints" / "iter_0000006")

    resumed = run_pretrain(corpus, killed_dir, *common, "--resume")
    assert_same_curves(whole, resumed, rel=1e-6)


def test_checkpoint_reshards_to_tensor_parallel(corpus, tp1_baseline, tmp_path):
    """A TP=1 checkpoint resumes at TP=2 and continues the TP=1 curve."""
    common, whole = TP1_BASELINE, tp1_baseline
    partial = tmp_path / "switch"
    run_pretrain(corpus, partial, *common, "--stop-at-sample", "8")
    assert open(partial / "checkpoints" / "latest").read().strip() == "2"
    resumed = run_pretrain(corpus, partial, *common, "--resume", "--tp", "2")
    assert_same_curves(whole, resumed)


def test_bad_layout_is_a_clear_error(corpus, tmp_path):
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", corpus, "--run-dir", str(tmp_path),
           *SMALL, "--global-batch", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "global_batch 3 must be a multiple of micro_batch*dp" in proc.stderr


def test_blended_run_resumes_inside_a_linear_phase(corpus, tp1_baseline, tmp_path):
    """Organic + a second source under a schedule that ramps linearly from sample 4 to 16: stopping at
    sample 8 (mid-ramp) and resuming gives the uninterrupted curve."""
    import gzip as gz

    from synpro_megatron.blending import BlendSchedule

    synth_src = tmp_path / "synthetic.jsonl"
    with gz.open(DEFAULT_WEB_SAMPLE, "rt", encoding="utf-8") as f, open(synth_src, "w") as out:
        for i, line in enumerate(f):
            if i >= 2000:
                doc = json.loads(line)
                out.write(json.dumps({"id": doc["id"], "text": doc["text"].upper()}) + "\n")
            if i >= 2200:
                break
    synth = tmp_path / "round_1_rephrase"
    prepare(PrepareConfig(input=str(synth_src), output=str(synth), held_out=0.0, workers=1))
    schedule = BlendSchedule.from_dict({"sources": ["organic", "round_1_rephrase"], "phases": [
        {"start": 0, "weights": {"organic": 1.0}},
        {"start": 4, "weights": {"organic": 1.0}, "end_weights": {"organic": 0.3, "round_1_rephrase": 0.7},
         "end": 16}]})
    path = tmp_path / "schedule.json"
    schedule.save(str(path))
    common = ["--max-steps", "4", "--eval-interval", "2", "--save-interval", "0", "--blend-schedule", str(path),
              "--synthetic", f"round_1_rephrase={synth}"]
    whole = run_pretrain(corpus, tmp_path / "whole", *common)
    part = tmp_path / "part"
    run_pretrain(corpus, part, *common, "--stop-at-sample", "8")
    resumed = run_pretrain(corpus, part, *common, "--resume")
    assert_same_curves(whole, resumed, rel=1e-6)
    plain = tp1_baseline  # the same run on organic data alone
    assert losses(plain)[:2] == losses(whole)[:2], "identical while the schedule is all organic"
    assert losses(plain)[-1] != losses(whole)[-1], "the synthetic source changes training after the ramp starts"


def test_sigterm_to_the_whole_process_group_checkpoints_then_resumes(corpus, tmp_path):
    """Slurm preemption: srun/torchrun signal every process of the job. The step in flight finishes,
    a checkpoint is written (its writer helper ignores the signal), and --resume continues."""
    run_dir = tmp_path / "preempted"
    args = ["--max-steps", "40", "--eval-interval", "0", "--save-interval", "0", "--tp", "2"]
    cmd = [sys.executable, "-m", "synpro_megatron.cli", "pretrain", "--data", corpus, "--run-dir", str(run_dir),
           *SMALL, *args, "--nproc-per-node", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(run_dir / "metrics.jsonl") and any(r["kind"] == "train" for r in metrics(run_dir)):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    step = int(open(run_dir / "checkpoints" / "latest").read())
    assert 1 <= step < 40, err[-3000:]
    resumed = run_pretrain(corpus, run_dir, *args, "--resume", nproc=2)
    steps = [r["step"] for r in resumed if r["kind"] == "train"]
    assert steps == list(range(1, 41))
