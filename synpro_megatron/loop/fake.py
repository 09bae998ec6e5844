"""A fake stage runner for tests and smoke runs of the loop machinery.

It writes the same files as the real stages (metrics lines, checkpoint dirs and the `latest`
marker, probe and generator dirs, synthetic .bin/.idx) in milliseconds, with a deterministic
loss curve that falls, flattens, and drops again after each synthetic round is blended in, so
the plateau detector and the whole state machine run for real.

    FakeRunner()                      stages run in this process (fast; unit tests)
    FakeRunner(subprocess=True)       stages run as `python -m synpro_megatron.loop.fake STAGE JSON`,
                                      through the same subprocess/SIGTERM path as CliRunner
    FakeRunner(crash_at=n, crash_mode="before"|"mid"|"after")
                                      the n-th stage call (1-based) raises FakeCrash: before doing
                                      anything, after writing part of its outputs, or after writing
                                      all of them (but before the controller could mark it done)

The fake trainer answers SIGTERM/SIGUSR1 like the real one: it checkpoints the current step and
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
from .layout import RunLayout
from .runner import StageRunner, SubprocessRunner

TAU = 40.0  # steps over which the fake loss falls by a factor e
ROUND_GAIN = 0.4  # how much lower the loss settles after each synthetic round


class FakeCrash(RuntimeError):
    """Stands for the process dying in the middle of a stage."""


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


def _save_checkpoint(layout: RunLayout, step: int, gb: int) -> None:
    path = layout.checkpoint(step)
    os.makedirs(path, exist_ok=True)
    atomic_write_json(os.path.join(path, "synpro_state.json"), {"step": step, "consumed_samples": step * gb})
    atomic_write_text(os.path.join(layout.checkpoints, "latest"), f"{step}\n")


class _Stop:
    def __init__(self, install: bool):
        self.requested = False
        if install:
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                signal.signal(sig, self._set)

    def _set(self, signum, frame):
        self.requested = True


def fake_pretrain(cfg: dict, crash_mid: bool = False, handle_signals: bool = False) -> int:
    """Returns the exit code (0, or 143 when stopped by a signal)."""
    layout = RunLayout(cfg["run_dir"])
    gb, seq = cfg["global_batch"], cfg.get("seq_length") or 256
    if not os.path.exists(cfg["data"] + ".bin"):
        raise FileNotFoundError(f"{cfg['data']}.bin: no organic data")
    start = (layout.latest_step() or 0) if cfg.get("resume") else 0
    end = cfg["max_steps"]
    if cfg.get("stop_at_sample") is not None:
        end = min(end, -(-cfg["stop_at_sample"] // gb))
    starts = _round_start_steps(cfg)
    stop = _Stop(handle_signals)
    step_s = float(os.environ.get("SYNPRO_FAKE_STEP_SECONDS", "0"))
    half = start + max(1, (end - start) // 2)
    os.makedirs(cfg["run_dir"], exist_ok=True)
    with open(layout.metrics, "a", encoding="utf-8") as metrics:
        def log(rec):
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

        if start == 0 and not os.path.exists(layout.checkpoint(0)):
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
            if stop.requested or step == end or step % cfg["save_interval"] == 0 or (crash_mid and step == half):
                _save_checkpoint(layout, step, gb)
            if stop.requested:
                return 143
            if crash_mid and step == half:
                # progress past the checkpoint is logged but lost, as when a real trainer dies
                log({"kind": "train", "step": step + 1, "consumed_samples": consumed + gb,
                     "tokens": (consumed + gb) * seq, "lm_loss": fake_loss(step + 1, starts, "lm_loss"),
                     "lr": cfg["lr"], "grad_norm": 1.0})
                raise FakeCrash(f"pretrain died after step {step}")
    return 0


def fake_prepare(input: str, output: str, partial: bool = False) -> None:
    if not os.path.exists(input):
        raise FileNotFoundError(f"{input}: no such input")
    atomic_write_text(output + ".bin", "fake tokens\n")
    if partial:
        raise FakeCrash("prepare died after the .bin")
    atomic_write_text(output + ".idx", "fake index\n")


def fake_probe(checkpoint: str, run_dir: str, partial: bool = False) -> None:
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to probe")
    os.makedirs(os.path.join(run_dir, "probe"), exist_ok=True)
    if partial:
        raise FakeCrash("probe died before writing")
    atomic_write_json(os.path.join(run_dir, "probe", "reference_grads.json"), {"checkpoint": os.path.basename(checkpoint)})


def fake_train_generator(kind: str, checkpoint: str, run_dir: str, partial: bool = False) -> None:
    if not os.path.isdir(os.path.join(run_dir, "probe")):
        raise FileNotFoundError(f"{run_dir}/probe: train-generator needs the probe output")
    out = os.path.join(run_dir, "generators", kind)
    os.makedirs(out, exist_ok=True)
    if partial:
        raise FakeCrash(f"train-generator {kind} died before writing")
    atomic_write_json(os.path.join(out, "generator.json"), {"kind": kind, "checkpoint": os.path.basename(checkpoint)})


def fake_synthesize(kind: str, generator: str, round_k: int, run_dir: str, partial: bool = False) -> None:
    if not os.path.isdir(generator):
        raise FileNotFoundError(f"{generator}: no generator")
    from synpro_megatron.data.indexed import write_indexed_dataset

    prefix = RunLayout(run_dir).synthetic_prefix(round_k, kind)
    # a real IndexedDataset (the blend step reads its size): 16 documents of 4096 tokens, enough
    # that the default epoch cap leaves the configured weights alone in the tests' budgets
    tmp = f"{prefix}.fake-tmp"
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    write_indexed_dataset(tmp, [[1 + (round_k * 31 + i * 7 + j) % 1000 for j in range(4096)] for i in range(16)],
                          vocab_size=49152)
    os.replace(tmp + ".bin", prefix + ".bin")
    if partial:
        raise FakeCrash(f"synthesize {kind} died after the .bin")
    os.replace(tmp + ".idx", prefix + ".idx")


STAGES = {"prepare": fake_prepare, "probe": fake_probe, "train_generator": fake_train_generator,
          "synthesize": fake_synthesize}


class FakeRunner(StageRunner):
    def __init__(self, crash_at: Optional[int] = None, crash_mode: str = "before", subprocess: bool = False,
                 echo=None):
        if crash_mode not in ("before", "mid", "after"):
            raise ValueError(f"crash_mode must be before|mid|after, got {crash_mode!r}")
        self.crash_at, self.crash_mode = crash_at, crash_mode
        self.calls = []  # (stage, detail) per call, for tests
        self._sub = _FakeSubprocess(echo=echo or (lambda *_: None)) if subprocess else None

    def _call(self, stage: str, fn, kwargs: dict):
        self.calls.append(stage)
        crash = self.crash_at == len(self.calls)
        if crash and self.crash_mode == "before":
            raise FakeCrash(f"crash before {stage} (call {len(self.calls)})")
        if self._sub is not None:
            self._sub.run_fake(stage, kwargs)
        else:
            rc = fn(**kwargs, **({"crash_mid" if fn is fake_pretrain else "partial": True}
                                 if crash and self.crash_mode == "mid" else {}))
            if fn is fake_pretrain and rc:
                raise FakeCrash(f"fake pretrain exited {rc}")
        if crash and self.crash_mode in ("mid", "after"):
            raise FakeCrash(f"crash after {stage} wrote its outputs (call {len(self.calls)})")

    def prepare(self, input, output, tokenizer=None, held_out=0.02):
        self._call("prepare", fake_prepare, dict(input=input, output=output))

    def pretrain(self, cfg, parallel, grace_s=240):
        self._call("pretrain", fake_pretrain, dict(cfg=dataclasses.asdict(cfg)))

    def probe(self, checkpoint, run_dir, args=()):
        self._call("probe", fake_probe, dict(checkpoint=checkpoint, run_dir=run_dir))

    def train_generator(self, kind, checkpoint, run_dir, args=()):
        self._call(f"train_generator:{kind}", fake_train_generator, dict(kind=kind, checkpoint=checkpoint,
                                                                          run_dir=run_dir))

    def synthesize(self, kind, generator, round_k, run_dir, args=()):
        self._call(f"synthesize:{kind}", fake_synthesize, dict(kind=kind, generator=generator, round_k=round_k,
                                                                run_dir=run_dir))

    def interrupt(self, signum):
        if self._sub is not None:
            self._sub.interrupt(signum)


class _FakeSubprocess(SubprocessRunner):
    """Runs a fake stage as a child process, so signals travel the same path as with CliRunner."""

    def run_fake(self, stage: str, kwargs: dict) -> None:
        self.run_command(stage, [self.python, "-m", "synpro_megatron.loop.fake", stage.split(":")[0],
                                 json.dumps(kwargs)])

    prepare = pretrain = probe = train_generator = synthesize = None  # unused: FakeRunner dispatches


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage, kwargs = argv[0], json.loads(argv[1])
    if stage == "pretrain":
        return fake_pretrain(kwargs["cfg"], handle_signals=True)
    STAGES[stage](**kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
