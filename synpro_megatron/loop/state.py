"""`LoopState`: where the loop stands, persisted in RUN_DIR/state.json (atomic writes).

Paths inside the run directory are stored relative to it, so a run directory can be moved (or
two runs compared) without the state changing.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from synpro_megatron.fsutil import atomic_write_json, read_json

STATE_VERSION = 1
DONE = "done"


def round_stages(kinds) -> List[str]:
    """The stages that build one synthetic round, in order."""
    return (["probe"] + [f"train_generator:{k}" for k in kinds] + [f"synthesize:{k}" for k in kinds]
            + ["extend_blend"])


@dataclass
class LoopState:
    stage: str = "pretrain"  # the next stage to run ("done" at the end)
    round: int = 0  # the synthetic round being built (probe .. extend_blend); rounds_done otherwise
    rounds_done: int = 0
    data: Optional[str] = None  # organic dataset prefix
    step: int = 0  # step of the last finished pretrain chunk
    consumed_samples: int = 0
    tokens: int = 0
    refresh_step: int = 0  # step at which the newest round was blended in (0: none yet)
    refresh_sample: int = 0
    plateau_step: Optional[int] = None  # checkpoint step the round being built starts from
    plateau_checkpoint: Optional[str] = None
    blend_schedule: Optional[str] = None  # current schedule file (None: organic only)
    synthetic: Dict[str, str] = field(default_factory=dict)  # blend source name -> dataset prefix
    history: List[dict] = field(default_factory=list)  # finished stages, in order
    events: int = 0  # records written to loop_log.jsonl (see Controller._commit)
    version: int = STATE_VERSION

    @property
    def done(self) -> bool:
        return self.stage == DONE

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "state.json") -> "LoopState":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; was it written by a newer synpro?")
        if d.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(f"{source}: field 'version' is {d['version']}, this synpro reads {STATE_VERSION}")
        return cls(**d)

    @classmethod
    def load(cls, path: str) -> Optional["LoopState"]:
        if not os.path.exists(path):
            return None
        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(d, source=path)

    def save(self, path: str) -> None:
        atomic_write_json(path, self.to_dict())
