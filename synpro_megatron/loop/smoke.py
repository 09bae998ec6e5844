"""The smoke payload: stand-in stage outputs for smoke runs of the loop, Slurm and NeMo-Run plumbing.

`synpro run --runner fake`, the NeMo-Run tasks' `payload="fake"` and SYNPRO_RUNNER=fake in the
Slurm scripts use it. It writes the same files as the real stages (metrics lines, checkpoint dirs
and the `latest` marker, probe and generator dirs, synthetic .bin/.idx; paths from
synpro_megatron.rundir) in milliseconds, with a deterministic loss curve that falls, flattens, and
drops again after each synthetic round is blended in, so the plateau detector and the whole state
machine run for real. Nothing is trained: never use it to judge data or models.

    SmokeRunner()                 stages run in this process
    SmokeRunner(subprocess=True)  stages run as `python -m synpro_megatron.loop.smoke STAGE JSON`,
                                  through the same subprocess/SIGTERM path as CliRunner

The smoke trainer answers SIGTERM/SIGUSR1 like the real one: it checkpoints the current step and
exits with 143. SYNPRO_FAKE_STEP_SECONDS slows its steps down (for preemption tests).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from typing import Optional

from synpro_megatron.fsutil import atomic_write_json, atomic_write_text, read_json
from synpro_megatron.rundir import RunDir

from .runner import StageRunner, SubprocessRunner

TAU = 40.0  # steps over which the fake loss falls by a factor e
ROUND_GAIN = 0.4  # how much lower the loss settles after each synthetic round


def fake_loss(step: int, round_start_steps, metric: str = "reference_loss") -> float:
    loss = 2.0 + 3.0 * math.exp(-step / TAU)
    for s in round_start_steps:
        if step > s:
            loss -= ROUND_GAIN * (1.0 - math.exp(-(step - s) / TAU))
    offset = 0.05 if metric == "heldout_loss" else 0.0
    return round(loss + offset + 0.0005 * math.sin(1.7 * step), 6)


def _round_start_steps(cfg: dict) -> list:
    if not cfg.get("blend_schedule"):
        return []
    phases = read_json(cfg["blend_schedule"])["phases"]
    return [p["start"] // cfg["global_batch"] for p in phases[1:]]


def _save_checkpoint(run: RunDir, step: int, gb: int) -> None:
    path = run.checkpoint(step)
    os.makedirs(path, exist_ok=True)
    atomic_write_json(os.path.join(path, "synpro_state.json"), {"step": step, "consumed_samples": step * gb})
    atomic_write_text(run.latest_file, f"{step}\n")


class _Stop:
    def __init__(self, install: bool):
        self.requested = False
        if install:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.requested = True


def fake_pretrain(cfg: dict, handle_signals: bool = False) -> int:
    """Returns the exit code (0, or 143 when stopped by a signal)."""
    run = RunDir(cfg["run_dir"])
    gb, seq = cfg["global_batch"], cfg.get("seq_length") or 256
    if not os.path.exists(cfg["data"] + ".bin"):
        raise FileNotFoundError(f"{cfg['data']}.bin: no organic data")
    start = (run.latest_step() or 0) if cfg.get("resume") else 0
    end = cfg["max_steps"]
    if cfg.get("stop_at_sample") is not None:
        end = min(end, -(-cfg["stop_at_sample"] // gb))
    starts = _round_start_steps(cfg)
    stop = _Stop(handle_signals)
    step_s = float(os.environ.get("SYNPRO_FAKE_STEP_SECONDS", "0"))
    os.makedirs(cfg["run_dir"], exist_ok=True)
    atomic_write_json(run.pretrain_config, cfg)  # as the real trainer does: the run's budget for blend_task
    with open(run.metrics, "a", encoding="utf-8") as metrics:
        def log(rec):
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

        if start == 0 and not os.path.exists(run.checkpoint(0)):
            log({"kind": "eval", "step": 0, "consumed_samples": 0, "tokens": 0,
                 "heldout_loss": fake_loss(0, starts, "heldout_loss"), "reference_loss": fake_loss(0, starts)})
        for step in range(start + 1, end + 1):
            if step_s:
                time.sleep(step_s)
            consumed = step * gb
            log({"kind": "train", "step": step, "consumed_samples": consumed, "tokens": consumed * seq,
                 "lm_loss": fake_loss(step, starts, "lm_loss"), "lr": cfg["lr"], "grad_norm": 1.0})
            if step % cfg["eval_interval"] == 0:
                log({"kind": "eval", "step": step, "consumed_samples": consumed, "tokens": consumed * seq,
                     "heldout_loss": fake_loss(step, starts, "heldout_loss"),
                     "reference_loss": fake_loss(step, starts)})
            if stop.requested or step == end or step % cfg["save_interval"] == 0:
                _save_checkpoint(run, step, gb)
            if stop.requested:
                return 143
    return 0


def fake_prepare(input: str, output: str) -> None:
    if not os.path.exists(input):
        raise FileNotFoundError(f"{input}: no such input")
    atomic_write_text(output + ".bin", "fake tokens\n")
    atomic_write_text(output + ".idx", "fake index\n")


def fake_probe(run_dir: str, round_k: int, checkpoint: str) -> None:
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to probe")
    out = RunDir(run_dir).probe_dir(round_k)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "reference_grads.json"), {"checkpoint": os.path.basename(checkpoint)})


def fake_train_generator(kind: str, run_dir: str, round_k: int, checkpoint: str) -> None:
    run = RunDir(run_dir)
    if not os.path.isdir(run.probe_dir(round_k)):
        raise FileNotFoundError(f"{run.probe_dir(round_k)}: train-generator needs the probe output")
    out = run.generator_dir(round_k, kind)
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, "generator.json"), {"kind": kind, "checkpoint": os.path.basename(checkpoint)})


def fake_synthesize(kind: str, run_dir: str, round_k: int, generator: Optional[str] = None) -> None:
    generator = generator or RunDir(run_dir).generator_dir(round_k, kind)
    if not os.path.isdir(generator):
        raise FileNotFoundError(f"{generator}: no generator")
    from synpro_megatron.data.indexed import write_indexed_dataset

    prefix = RunDir(run_dir).synthetic_prefix(round_k, kind)
    # a real IndexedDataset (the blend step reads its size): 16 documents of 4096 tokens, enough
    # that the default epoch cap leaves the configured weights alone in the tests' budgets
    tmp = f"{prefix}.fake-tmp"
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    write_indexed_dataset(tmp, [[1 + (round_k * 31 + i * 7 + j) % 1000 for j in range(4096)] for i in range(16)],
                          vocab_size=49152)
    os.replace(tmp + ".bin", prefix + ".bin")
    os.replace(tmp + ".idx", prefix + ".idx")


STAGES = {"prepare": fake_prepare, "pretrain": fake_pretrain, "probe": fake_probe,
          "train_generator": fake_train_generator, "synthesize": fake_synthesize}


class SmokeRunner(StageRunner):
    """The smoke stages, in this process or (subprocess=True) as child processes."""

    def __init__(self, subprocess: bool = False, echo=None):
        self.calls = []  # stage names, in call order
        self._sub = _FakeSubprocess(echo=echo or (lambda *_: None)) if subprocess else None

    def _call(self, stage: str, kwargs: dict) -> None:
        self.calls.append(stage)
        name = stage.split(":")[0]
        if self._sub is not None:
            self._sub.run_fake(stage, kwargs)
            return
        rc = STAGES[name](**kwargs)
        if rc:
            raise RuntimeError(f"smoke {stage} exited {rc}")

    def prepare(self, input, output, tokenizer=None, held_out=0.02):
        self._call("prepare", dict(input=input, output=output))

    def pretrain(self, cfg, parallel, grace_s=240):
        self._call("pretrain", dict(cfg=dataclasses.asdict(cfg)))

    def probe(self, run_dir, round_k, checkpoint, args=()):
        self._call("probe", dict(run_dir=run_dir, round_k=round_k, checkpoint=checkpoint))

    def train_generator(self, kind, run_dir, round_k, checkpoint, args=(), organic=None):
        self._call(f"train_generator:{kind}", dict(kind=kind, run_dir=run_dir, round_k=round_k, checkpoint=checkpoint))

    def synthesize(self, kind, run_dir, round_k, generator=None, args=(), organic=None):
        self._call(f"synthesize:{kind}", dict(kind=kind, run_dir=run_dir, round_k=round_k, generator=generator))

    def interrupt(self, signum):
        if self._sub is not None:
            self._sub.interrupt(signum)


class _FakeSubprocess(SubprocessRunner):
    """Runs a fake stage as a child process, so signals travel the same path as with CliRunner."""

    def run_fake(self, stage: str, kwargs: dict) -> None:
        self.run_command(stage, [self.python, "-m", "synpro_megatron.loop.smoke", stage.split(":")[0],
                                 json.dumps(kwargs)])

    prepare = pretrain = probe = train_generator = synthesize = None  # unused: SmokeRunner dispatches


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage, kwargs = argv[0], json.loads(argv[1])
    if stage == "pretrain":
        return fake_pretrain(kwargs["cfg"], handle_signals=True)  # a child process: answer signals
    STAGES[stage](**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
