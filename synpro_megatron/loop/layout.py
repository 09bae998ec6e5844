"""Where everything lives in a run directory. One place, so stages, tasks and tests agree.

    RUN_DIR/
      state.json  loop_log.jsonl  loop_config.json      controller (this package)
      data/organic.{bin,idx}                             prepare (when the config gives `input`)
      metrics.jsonl  checkpoints/iter_NNNNNNN/  checkpoints/latest  tensorboard/   pretrain
      rounds/round_K/                                    --run-dir of probe and train-generator for round K
        probe/                                           reference-set projected gradients (probe)
        generators/KIND/                                 trained generator (train-generator --kind KIND)
      synthetic/round_K/KIND.{bin,idx}                   synthesize --round K
      blend/schedule_round_K.json                        the blend schedule with rounds 1..K
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional


def source_name(round_k: int, kind: str) -> str:
    """Blend-schedule source name of a synthetic round."""
    return f"round{round_k}_{kind}"


@dataclass(frozen=True)
class RunLayout:
    run_dir: str

    def p(self, *parts: str) -> str:
        return os.path.join(self.run_dir, *parts)

    @property
    def state(self) -> str:
        return self.p("state.json")

    @property
    def loop_log(self) -> str:
        return self.p("loop_log.jsonl")

    @property
    def config_snapshot(self) -> str:
        return self.p("loop_config.json")

    @property
    def metrics(self) -> str:
        return self.p("metrics.jsonl")

    @property
    def checkpoints(self) -> str:
        return self.p("checkpoints")

    @property
    def organic_prefix(self) -> str:
        return self.p("data", "organic")

    def checkpoint(self, step: int) -> str:
        return self.p("checkpoints", f"iter_{step:07d}")

    def latest_step(self) -> Optional[int]:
        """Step recorded in checkpoints/latest, or None when there is no checkpoint yet."""
        path = self.p("checkpoints", "latest")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{path}: expected a step number, got {text!r}") from None

    def latest_checkpoint(self) -> Optional[str]:
        step = self.latest_step()
        return None if step is None else self.checkpoint(step)

    def round_dir(self, k: int) -> str:
        return self.p("rounds", f"round_{k}")

    def probe_dir(self, k: int) -> str:
        return os.path.join(self.round_dir(k), "probe")

    def generator_dir(self, k: int, kind: str) -> str:
        return os.path.join(self.round_dir(k), "generators", kind)

    def synthetic_prefix(self, k: int, kind: str) -> str:
        return self.p("synthetic", f"round_{k}", kind)

    def blend_schedule(self, k: int) -> str:
        return self.p("blend", f"schedule_round_{k}.json")
