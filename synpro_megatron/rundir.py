"""The run-directory contract: every path under a run directory, in one place.

Every stage command takes `--run-dir ROOT` (plus `--round K` where it applies) and finds its
inputs and outputs here; no other module joins run-directory paths by hand.

    ROOT/
      data/organic.{bin,idx,docids.json,meta.json}   prepare: the organic training pool
      data/organic_heldout.{bin,idx,docids.json}     prepare: held-out documents (never rewritten)
      pretrain_config.json  metrics.jsonl  tensorboard/NAME/
      checkpoints/iter_NNNNNNN/  checkpoints/latest  pretrain
      rounds/round_K/probe/                          probe --round K
      rounds/round_K/generators/KIND/                train-generator --round K (the generator's one home)
      synthetic/round_K/KIND.{bin,idx}               synthesize --round K
      synthetic/round_K/KIND.{provenance,dropped}.jsonl
      synthetic/round_K/.work/KIND/                  synthesis journals (resume state)
      synthetic/manifest.json                        every synthetic round/kind
      blend/schedule_round_K.json                    the blend schedule with rounds 1..K
      state.json  loop_log.jsonl  loop_config.json   the loop controller (`synpro run`)
      reports/                                       `synpro report`
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

ORGANIC = "organic"


def source_name(round_k: int, kind: str) -> str:
    """Blend-schedule source name of a synthetic round."""
    return f"round{round_k}_{kind}"


def parse_source_name(name: str) -> tuple:
    """(round, kind) of a blend-schedule source name (inverse of `source_name`)."""
    head, _, kind = name.partition("_")
    if not (head.startswith("round") and head[5:].isdigit() and kind):
        raise ValueError(f"{name!r} is not a synthetic source name (roundK_KIND)")
    return int(head[5:]), kind


@dataclass(frozen=True)
class RunDir:
    root: str

    def __post_init__(self):
        object.__setattr__(self, "root", os.path.abspath(str(self.root)))

    def p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # -------------------------------------------------------------- data (prepare)
    @property
    def organic_prefix(self) -> str:
        return self.p("data", ORGANIC)

    @property
    def heldout_prefix(self) -> str:
        return heldout_prefix(self.organic_prefix)

    # -------------------------------------------------------------- pretraining
    @property
    def pretrain_config(self) -> str:
        return self.p("pretrain_config.json")

    @property
    def metrics(self) -> str:
        return self.p("metrics.jsonl")

    def tensorboard(self, name: Optional[str] = None) -> str:
        """TensorBoard folder: pretraining writes to the root, other stages to a named subfolder."""
        return self.p("tensorboard", name) if name else self.p("tensorboard")

    @property
    def checkpoints(self) -> str:
        return self.p("checkpoints")

    def checkpoint(self, step: int) -> str:
        return self.p("checkpoints", f"iter_{step:07d}")

    @property
    def latest_file(self) -> str:
        return self.p("checkpoints", "latest")

    def latest_step(self) -> Optional[int]:
        """Step recorded in checkpoints/latest, or None when there is no checkpoint yet."""
        if not os.path.exists(self.latest_file):
            return None
        with open(self.latest_file, encoding="utf-8") as f:
            text = f.read().strip()
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{self.latest_file}: expected a step number, got {text!r}") from None

    def latest_checkpoint(self) -> Optional[str]:
        step = self.latest_step()
        return None if step is None else self.checkpoint(step)

    # -------------------------------------------------------------- rounds
    def round_dir(self, k: int) -> str:
        return self.p("rounds", f"round_{k}")

    def probe_dir(self, k: int) -> str:
        return os.path.join(self.round_dir(k), "probe")

    def probe_doc_losses(self, k: int) -> str:
        return os.path.join(self.probe_dir(k), "doc_losses.jsonl")

    def generator_dir(self, k: int, kind: str) -> str:
        return os.path.join(self.round_dir(k), "generators", kind)

    # -------------------------------------------------------------- synthetic data
    def synthetic_round_dir(self, k: int) -> str:
        return self.p("synthetic", f"round_{k}")

    def synthetic_prefix(self, k: int, kind: str) -> str:
        return os.path.join(self.synthetic_round_dir(k), kind)

    def provenance(self, k: int, kind: str) -> str:
        return self.synthetic_prefix(k, kind) + ".provenance.jsonl"

    def dropped(self, k: int, kind: str) -> str:
        return self.synthetic_prefix(k, kind) + ".dropped.jsonl"

    def synthesis_work_dir(self, k: int, kind: str) -> str:
        return os.path.join(self.synthetic_round_dir(k), ".work", kind)

    @property
    def manifest(self) -> str:
        return self.p("synthetic", "manifest.json")

    # -------------------------------------------------------------- blend
    def blend_schedule(self, k: int) -> str:
        return self.p("blend", f"schedule_round_{k}.json")

    # -------------------------------------------------------------- loop controller
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
    def loop_lock(self) -> str:
        return self.p(".loop.lock")

    # -------------------------------------------------------------- reports
    @property
    def reports(self) -> str:
        return self.p("reports")


def heldout_prefix(organic_prefix: str) -> str:
    """The held-out split `synpro prepare` writes beside an organic prefix."""
    return organic_prefix + "_heldout"
