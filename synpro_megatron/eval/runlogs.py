"""Reading a run directory's logs, tolerantly, and writing files atomically.

Readers accept what a live or copied-back run leaves: a JSONL file whose last line is still being
written, a resumed trainer's repeated steps (the later line wins), files that are absent. What
they cannot make sense of raises ValueError naming the file, line or field.
"""
from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# One implementation of atomic writes and tolerant JSON(L) reads, shared with the loop.
from synpro_megatron.fsutil import atomic_write_text as write_text_atomic  # noqa: F401 - re-exported
from synpro_megatron.fsutil import read_json  # noqa: F401 - re-exported
from synpro_megatron.fsutil import read_jsonl as _read_jsonl

REALIZED_MAX_SAMPLES = 4_000_000  # above this the blend plot shows the schedule's target only


def append_jsonl_atomic(path: str, record: dict) -> None:
    """Append one line by rewriting the file under a temporary name: a crash keeps the old file."""
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if old and not old.endswith("\n"):
            old += "\n"
    write_text_atomic(path, old + json.dumps(record, sort_keys=True) + "\n")


def read_jsonl(path: str) -> List[dict]:
    """Records of a JSONL file (missing file: FileNotFoundError); a torn last line is skipped."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return _read_jsonl(path)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class RunLogs:
    """What one run directory's logs say."""
    run_dir: str
    label: str
    evals: List[dict] = field(default_factory=list)  # one per step, by step
    train: List[dict] = field(default_factory=list)
    state: Optional[dict] = None
    loop_log: List[dict] = field(default_factory=list)
    read: List[str] = field(default_factory=list)  # files read
    missing: List[str] = field(default_factory=list)  # files looked for, absent

    def path(self, *parts) -> str:
        return os.path.join(self.run_dir, *parts)

    def series(self, metric: str) -> List[Tuple[float, float]]:
        return [(r["tokens"], r[metric]) for r in self.evals if is_number(r.get(metric)) and is_number(r.get("tokens"))]

    def final_eval(self, metric: str) -> Optional[dict]:
        recs = [r for r in self.evals if is_number(r.get(metric))]
        return recs[-1] if recs else None

    def last_record(self) -> Optional[dict]:
        recs = [r for r in self.evals + self.train if is_number(r.get("step"))]
        return max(recs, key=lambda r: (r["step"], r.get("kind") == "eval")) if recs else None

    def samples_and_tokens_per_step(self) -> Tuple[Optional[float], Optional[float]]:
        for r in reversed(self.train + self.evals):
            step, samples, tokens = r.get("step"), r.get("consumed_samples"), r.get("tokens")
            if is_number(step) and step > 0 and is_number(samples) and is_number(tokens):
                return samples / step, tokens / step
        return None, None

    def tokens_per_sample(self) -> Optional[float]:
        samples, tokens = self.samples_and_tokens_per_step()
        return tokens / samples if samples else None

    def tokens_at_step(self, step) -> Optional[float]:
        for r in self.evals + self.train:
            if r.get("step") == step and is_number(r.get("tokens")):
                return r["tokens"]
        _, per_step = self.samples_and_tokens_per_step()
        return step * per_step if per_step is not None and is_number(step) else None


def load_run(run_dir: str, label: str) -> RunLogs:
    run = RunLogs(run_dir=run_dir, label=label)
    metrics = run.path("metrics.jsonl")
    if os.path.exists(metrics):
        by_step: Dict[int, dict] = {}
        for rec in read_jsonl(metrics):
            if rec.get("kind") == "eval" and is_number(rec.get("step")):
                by_step[int(rec["step"])] = rec  # a resumed run re-logs steps: the later line wins
            elif rec.get("kind") == "train":
                run.train.append(rec)
        run.evals = [by_step[s] for s in sorted(by_step)]
        run.read.append(metrics)
    else:
        run.missing.append(metrics)
    for name, attr, reader in (("state.json", "state", read_json), ("loop_log.jsonl", "loop_log", read_jsonl)):
        p = run.path(name)
        if os.path.exists(p):
            setattr(run, attr, reader(p))
            run.read.append(p)
        else:
            run.missing.append(p)
    return run


def loss_events(run: RunLogs) -> List[dict]:
    """Plateau decisions that fired and refreshes (rounds blended in), with step and tokens."""
    events = []
    samples_per_step, _ = run.samples_and_tokens_per_step()
    tps = run.tokens_per_sample()
    for rec in run.loop_log:
        if rec.get("plateau") is True and is_number(rec.get("step")):
            tokens = rec["tokens"] if is_number(rec.get("tokens")) else run.tokens_at_step(rec["step"])
            if tokens is not None:
                detail = rec.get("action") or rec.get("reason") or ""
                events.append({"kind": "plateau", "round": rec.get("round"), "step": rec["step"], "tokens": tokens,
                               "detail": detail})
    refreshes = [r for r in run.loop_log if r.get("kind") == "stage" and r.get("stage") == "extend_blend"]
    if not refreshes and run.state:  # no loop log: state.json keeps the same entries in its history
        refreshes = [h for h in run.state.get("history", []) if h.get("stage") == "extend_blend"]
    for rec in refreshes:
        start = rec.get("start_sample")
        if not is_number(start) or tps is None:
            continue
        step = start / samples_per_step if samples_per_step else None
        if rec.get("weights"):
            detail = "weights " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(rec["weights"].items()))
        else:  # every rewrite of the round failed the gate: the blend was left as it was
            detail = "no synthetic documents passed the gate; blend unchanged"
        events.append({"kind": "refresh", "round": rec.get("round"), "step": int(round(step)) if step is not None else None,
                       "tokens": start * tps, "detail": detail, "blended": bool(rec.get("weights"))})
    return sorted(events, key=lambda e: (e["tokens"], e["kind"]))


def numpy_window_lengths(num_samples: int, window: int):
    import numpy

    n = math.ceil(num_samples / window)
    return numpy.minimum(window, num_samples - numpy.arange(n) * window)


def blend_mix(raw: dict, path: str, num_samples: int, window: int):
    """(sources, target [W, S], realized [W, S] or None) per window of `window` samples."""
    try:
        from synpro_megatron.blending import BlendSchedule, build_blend_indices, realized_mix, target_mix
    except ImportError:
        return _target_mix_from_json(raw, num_samples, window)
    schedule = BlendSchedule.from_dict(raw, origin=path)
    target = target_mix(schedule, num_samples, window)
    realized = None
    if num_samples <= REALIZED_MAX_SAMPLES:
        dataset_index, _ = build_blend_indices(schedule, num_samples)
        realized = realized_mix(dataset_index, len(schedule.sources), window)
    return list(schedule.sources), target, realized


def _target_mix_from_json(raw: dict, num_samples: int, window: int):
    """Window-start weights straight from the phases (used when the blending package is absent)."""
    import numpy

    sources = list(raw["sources"])
    phases = sorted(raw["phases"], key=lambda p: p["start"])
    rows = []
    for w in range(math.ceil(num_samples / window)):
        s = w * window
        i = max(k for k, p in enumerate(phases) if p["start"] <= s)
        p = phases[i]
        a = numpy.array([float(p["weights"].get(n, 0)) for n in sources])
        a /= a.sum()
        if p.get("end_weights"):
            end = p.get("end") or (phases[i + 1]["start"] if i + 1 < len(phases) else s + 1)
            b = numpy.array([float(p["end_weights"].get(n, 0)) for n in sources])
            b /= b.sum()
            f = min(1.0, (s - p["start"]) / max(1, end - p["start"]))
            a = (1 - f) * a + f * b
        rows.append(a)
    return sources, numpy.array(rows), None


def check_schedule_json(raw, path: str) -> None:
    """The shape this report reads (the blending package validates the rest when it loads it)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not isinstance(raw.get("phases"), list):
        raise ValueError(f"{path}: expected an object with lists 'sources' and 'phases'")
    for i, p in enumerate(raw["phases"]):
        if not isinstance(p, dict) or not is_number(p.get("start")) or not isinstance(p.get("weights"), dict):
            raise ValueError(f"{path}: phases[{i}]: needs a numeric 'start' and a 'weights' mapping")
        for key in ("weights", "end_weights"):
            if p.get(key) is not None and not (isinstance(p[key], dict) and all(is_number(v) for v in p[key].values())):
                raise ValueError(f"{path}: phases[{i}].{key}: weights must be numbers")


def valid_mc_record(rec: dict) -> bool:
    """An eval_mc.jsonl line as `synpro eval` writes it (others are skipped, not fatal)."""
    tasks = rec.get("tasks")
    if not (is_number(rec.get("macro_acc")) and is_number(rec.get("macro_acc_norm"))):
        return False
    return isinstance(tasks, dict) and bool(tasks) and all(
        isinstance(t, dict) and all(is_number(t.get(k)) for k in ("acc", "acc_norm", "n")) for t in tasks.values())


def indexed_counts(idx_path: str) -> Optional[dict]:
    """{"docs", "tokens"} from a Megatron .idx header (no megatron import); None if it is not one."""
    import struct

    import numpy

    try:
        with open(idx_path, "rb") as f:
            if f.read(9) != b"MMIDIDX\x00\x00":
                return None
            f.read(8 + 1)  # version, dtype code
            sequences = struct.unpack("<Q", f.read(8))[0]
            documents = struct.unpack("<Q", f.read(8))[0]
            lengths = numpy.fromfile(f, dtype=numpy.int32, count=sequences)
    except (OSError, struct.error):
        return None
    if lengths.size != sequences:
        return None
    return {"docs": int(documents) - 1, "tokens": int(lengths.sum(dtype=numpy.int64))}


def manifest_entries(manifest, path: str = "manifest.json") -> Dict[Tuple[int, str], dict]:
    """(round, kind) -> the entry `synpro synthesize` wrote: {"version", "rounds": {"K": {KIND: {
    "documents", "sources", "dropped", "tokens", "tokenizer", "job": {"source", ...}, ...}}}}."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("rounds", {}), dict):
        raise ValueError(f"{path}: expected an object whose field 'rounds' maps round -> kind -> entry")
    out = {}
    for k, kinds in manifest.get("rounds", {}).items():
        if not str(k).isdigit() or not isinstance(kinds, dict):
            raise ValueError(f"{path}: rounds[{k!r}]: expected a round number mapping kind -> entry")
        for kind, entry in kinds.items():
            if not isinstance(entry, dict):
                raise ValueError(f"{path}: rounds[{k!r}][{kind!r}]: expected an object")
            out[(int(k), kind)] = entry
    return out


def source_id(rec: dict) -> Optional[str]:
    for key in ("source_id", "source_doc_id", "doc_id", "source"):
        if isinstance(rec.get(key), (str, int)) and not isinstance(rec.get(key), bool):
            return str(rec[key])
    return None


def source_text(rec: dict) -> Optional[str]:
    v = rec.get("source_text")
    return v if isinstance(v, str) and v.strip() else None


def synthetic_text(rec: dict) -> Optional[str]:
    for key in ("text", "synthetic_text", "output", "completion"):
        if isinstance(rec.get(key), str) and rec[key].strip():
            return rec[key]
    return None


REWARD_NAMES = ("combined", "quality", "faithfulness", "influence", "format")


def rewards_of(rec: dict) -> "OrderedDict[str, float]":
    """Numeric rewards of a provenance record: a `rewards` mapping, else the top-level reward
    fields (`synpro synthesize` writes quality, faithfulness, format), reward*/gate* keys included."""
    if isinstance(rec.get("rewards"), dict):
        items = list(rec["rewards"].items())
    else:
        items = [(k, v) for k, v in rec.items() if k in REWARD_NAMES or k.startswith("reward") or "gate" in k]
    return OrderedDict((k.replace("reward/", ""), float(v)) for k, v in items if is_number(v))
