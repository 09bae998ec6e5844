"""Crash injection around the smoke stages (test-only): `FakeRunner(crash_at=n, crash_mode=...)`.

The n-th stage call (1-based) raises FakeCrash: "before" doing anything, "mid" after writing part
of its outputs (a pretrain chunk checkpoints half-way and logs a step past it, as a dying trainer
does; other stages leave a .bin without its .idx or an empty output folder), or "after" writing
all of them (but before the controller could mark the stage done).
"""
import json
import os

from synpro_megatron.loop.smoke import SmokeRunner, _round_start_steps, fake_loss
from synpro_megatron.rundir import RunDir


class FakeCrash(RuntimeError):
    """Stands for the process dying in the middle of a stage."""


class FakeRunner(SmokeRunner):
    def __init__(self, crash_at=None, crash_mode="before", subprocess=False, echo=None):
        if crash_mode not in ("before", "mid", "after"):
            raise ValueError(f"crash_mode must be before|mid|after, got {crash_mode!r}")
        super().__init__(subprocess=subprocess, echo=echo)
        self.crash_at, self.crash_mode = crash_at, crash_mode

    def _call(self, stage, kwargs):
        crash = self.crash_at == len(self.calls) + 1
        if crash and self.crash_mode == "before":
            self.calls.append(stage)
            raise FakeCrash(f"crash before {stage} (call {len(self.calls)})")
        if crash and self.crash_mode == "mid":
            self.calls.append(stage)
            _partial(stage, kwargs)
            raise FakeCrash(f"crash in the middle of {stage} (call {len(self.calls)})")
        super()._call(stage, kwargs)
        if crash:
            raise FakeCrash(f"crash after {stage} wrote its outputs (call {len(self.calls)})")


def _partial(stage, kwargs):
    """What a stage killed half-way leaves behind."""
    from synpro_megatron.loop.smoke import STAGES

    name = stage.split(":")[0]
    if name == "pretrain":
        cfg = dict(kwargs["cfg"])
        run = RunDir(cfg["run_dir"])
        gb = cfg["global_batch"]
        start = (run.latest_step() or 0) if cfg.get("resume") else 0
        end = cfg["max_steps"] if cfg.get("stop_at_sample") is None else min(cfg["max_steps"],
                                                                           -(-cfg["stop_at_sample"] // gb))
        half = start + max(1, (end - start) // 2)
        STAGES["pretrain"](dict(cfg, stop_at_sample=half * gb))  # checkpoints at `half`
        # progress past the checkpoint is logged but lost, as when a real trainer dies
        with open(run.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": "train", "step": half + 1, "consumed_samples": (half + 1) * gb,
                                "tokens": (half + 1) * gb * (cfg.get("seq_length") or 256),
                                "lm_loss": fake_loss(half + 1, _round_start_steps(cfg), "lm_loss"), "lr": cfg["lr"], "grad_norm": 1.0})
                    + "\n")
        return
    if name == "prepare":
        STAGES["prepare"](**kwargs)
        os.remove(kwargs["output"] + ".idx")
        return
    run = RunDir(kwargs["run_dir"])
    k = kwargs["round_k"]
    if name == "probe":
        os.makedirs(run.probe_dir(k), exist_ok=True)
    elif name == "train_generator":
        os.makedirs(run.generator_dir(k, kwargs["kind"]), exist_ok=True)
    elif name == "synthesize":
        STAGES["synthesize"](**kwargs)
        os.remove(run.synthetic_prefix(k, kwargs["kind"]) + ".idx")
    else:
        raise AssertionError(name)


__all__ = ["FakeCrash", "FakeRunner"]
