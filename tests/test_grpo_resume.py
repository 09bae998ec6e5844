"""GRPO survives preemption: `synpro train-generator` killed (SIGKILL) after a checkpoint and rerun
with --resume ends at the same step count with the same reward log as an uninterrupted run.

The policy is a freshly initialised 2-layer Llama with SmolLM2's tokenizer and chat template (a
real HF folder, loaded by our code like any generator), so a GRPO step takes about a second; the
rewards, TRL, the checkpoints and the CLI are the real ones."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synpro_megatron.rl.grpo import REWARD_LOG, RUN_CONFIG, latest_checkpoint, read_reward_log
from tiny_generator import make_tiny_generator


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    return make_tiny_generator(tmp_path_factory.mktemp("tiny_generator"))


def _cmd(generator, run_dir, *extra):
    return [sys.executable, "-m", "synpro_megatron.cli", "train-generator", "--kind", "rephrase",
            "--run-dir", str(run_dir), "--round", "1", "--generator", generator, "--no-influence",
            "--steps", "3", "--save-steps", "2", "--num-prompts", "4", "--num-generations", "2",
            "--prompts-per-device", "2", "--max-completion-length", "12", "--max-source-tokens", "64",
            "--lr", "1e-3", *extra]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _strip_time(log):
    return [{k: v for k, v in line.items() if k != "time"} for line in log]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # three CLI runs; on an idle 2-core machine about 2 minutes
def test_killed_grpo_resumes_to_the_same_steps_and_reward_log(tiny_generator, tmp_path):
    # uninterrupted reference run
    ref_dir = tmp_path / "ref"
    subprocess.run(_cmd(tiny_generator, ref_dir), check=True, env=_env(), timeout=400)
    ref_out = ref_dir / "rounds" / "round_1" / "generators" / "rephrase"
    ref_log = read_reward_log(str(ref_out))
    assert [line["step"] for line in ref_log] == [1, 2, 3]
    meta = json.loads((ref_out / "synpro_generator.json").read_text())
    assert meta["resumed_from"] is None
    assert meta["sampling"] == {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.0}
    # TRL's own scalars (loss, KL, entropy, clip ratio) land in the run's TensorBoard folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    tb = ref_dir / "tensorboard" / "grpo-round_1-rephrase"
    for name in os.listdir(tb):
        acc = EventAccumulator(str(tb / name))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "reward/combined"} <= tags, tags
    assert any(t.startswith("train/") and "entropy" in t for t in tags), tags

    # the same run, killed with SIGKILL once the step-2 checkpoint is complete
    run_dir = tmp_path / "run"
    work = run_dir / "rounds" / "round_1" / "generators" / ".rephrase.work"
    proc = subprocess.Popen(_cmd(tiny_generator, run_dir), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if (work / "checkpoint-2" / "trainer_state.json").exists():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed after its checkpoint"
    assert latest_checkpoint(work).name == "checkpoint-2"
    assert not (run_dir / "rounds" / "round_1" / "generators" / "rephrase").exists()
    before = read_reward_log(str(work))
    assert [line["step"] for line in before][:2] == [1, 2]

    # a rerun without --resume would start over; with --resume it continues at step 2
    done = subprocess.run(_cmd(tiny_generator, run_dir, "--resume"), env=_env(), timeout=400,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stdout and "at step 2" in done.stdout
    out = run_dir / "rounds" / "round_1" / "generators" / "rephrase"
    log = read_reward_log(str(out))
    assert [line["step"] for line in log] == [1, 2, 3]
    assert log[:2] == before[:2]  # the lines written before the kill are kept, not rewritten
    # same data order, RNG and weights after the resume: the same rewards as without the kill
    assert _strip_time(log) == _strip_time(ref_log)
    assert json.loads((out / "synpro_generator.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert not work.exists()  # the finished run cleans its work folder


def test_resume_refuses_other_settings(tmp_path):
    from synpro_megatron.rl.grpo import GRPORunConfig, prepare_work_dir

    work = tmp_path / "w"
    cfg = GRPORunConfig(kind="rephrase", run_dir=str(tmp_path), num_prompts=4, resume=True)
    assert prepare_work_dir(cfg, work) is None  # nothing to resume: a fresh start in the same folder
    assert json.loads((work / RUN_CONFIG).read_text())["num_prompts"] == 4
    (work / REWARD_LOG).write_text('{"step": 1}\n{"step": 2}\n{"ste')  # a line cut by a kill
    ck = work / "checkpoint-1"
    ck.mkdir()
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    assert prepare_work_dir(cfg, work) == ck
    assert (work / REWARD_LOG).read_text() == '{"step": 1}\n'
    import dataclasses

    with pytest.raises(ValueError, match="num_prompts was 4, now 8"):
        prepare_work_dir(dataclasses.replace(cfg, num_prompts=8), work)
    prepare_work_dir(dataclasses.replace(cfg, resume=False), work)  # no --resume: start over
    assert not ck.exists() and not (work / REWARD_LOG).exists()


def test_accelerate_configs():
    from synpro_megatron.rl import launch

    z2 = launch.accelerate_config(4, "zero2")
    assert "distributed_type: DEEPSPEED" in z2 and "zero_stage: 2" in z2 and "num_processes: 4" in z2
    fsdp = launch.accelerate_config(2, "fsdp")
    assert "distributed_type: FSDP" in fsdp and "FULL_STATE_DICT" in fsdp
    with pytest.raises(ValueError):
        launch.accelerate_config(1, "zero2")
    cmd = launch.relaunch_command(["train-generator", "--gpus", "4"], 4, "zero2", Path("/tmp/x-launch"))
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"]
    assert cmd[-3:] == ["train-generator", "--gpus", "4"]
