"""Blend schedules: target weights over named sources as a function of the global sample index.

File form (JSON, or YAML for a `.yaml`/`.yml` path)::

    {"sources": ["organic", "round1"],
     "phases": [{"start": 0,      "weights": {"organic": 1.0}},
                {"start": 100000, "weights": {"organic": 0.9, "round1": 0.1},
                                  "end_weights": {"organic": 0.6, "round1": 0.4}},
                {"start": 300000, "weights": {"organic": 0.6, "round1": 0.4}}]}

* Each phase starts at a global sample index; the first starts at 0, each later one strictly after
  the previous one. A source missing from a phase's weights has weight 0 (never drawn there).
* Weights are relative: they are normalised per phase (as Megatron normalises `--data-path`
  weights), so {"a": 3, "b": 1} means 75 % / 25 %.
* A phase with `end_weights` is linear: the weights move from `weights` at `start` to
  `end_weights` at `end` (default: the next phase's start). After `end` the end weights hold until
  the next phase. A linear *last* phase must give `end` (there is no next start to ramp to). If the
  next phase starts before `end`, the ramp is cut there.
* The cumulative target T_k(n) of source k after n samples is the integral of the weight curve over
  [0, n); the blend-index builder keeps every source's count within a couple of samples of it.
  T_k(n) for n <= s does not depend on any phase starting at or after s, so appending a phase never
  changes the indices already produced (resume is exact).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy

MAX_SOURCES = 32766  # Megatron's dataset_index is int16


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the file (if any), phase and field."""


@dataclass(frozen=True)
class Phase:
    start: int
    weights: Mapping[str, float]
    end_weights: Optional[Mapping[str, float]] = None
    end: Optional[int] = None  # linear phases only: where end_weights are reached

    @property
    def is_linear(self) -> bool:
        return self.end_weights is not None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"start": self.start, "weights": _nonzero(self.weights)}
        if self.end_weights is not None:
            d["end_weights"] = _nonzero(self.end_weights)
        if self.end is not None:
            d["end"] = self.end
        return d


def _nonzero(weights: Mapping[str, float]) -> dict:
    return {name: w for name, w in weights.items() if w != 0}


@dataclass(frozen=True)
class SegmentTable:
    """The schedule as pieces on which the weights are constant or linear (the builders' input).

    Segment q covers [start[q], start[q+1]) (the last one runs to the end). With
    j = max(s,1) - start[q], the cumulative target there is
    base[q] + weight[q] * j (constant) or base[q] + j * (weight[q] + slope[q] * j) (linear).
    candidate[q, k] is False where source k has weight 0 throughout the segment.
    """

    start: numpy.ndarray  # int64 [Q]
    linear: numpy.ndarray  # uint8 [Q]
    candidate: numpy.ndarray  # uint8 [Q, K]
    weight: numpy.ndarray  # float64 [Q, K], normalised weights at the segment start
    slope: numpy.ndarray  # float64 [Q, K], (end - start weights) / (2 * ramp length); 0 if constant
    base: numpy.ndarray  # float64 [Q, K], cumulative target at the segment start

    def segment_of(self, positions: numpy.ndarray) -> numpy.ndarray:
        return numpy.searchsorted(self.start, positions, side="right") - 1

    def cumulative(self, positions: Iterable[int]) -> numpy.ndarray:
        """T_k(n) for each n in positions: float64 [len(positions), K] (T(0) = 0)."""
        n = numpy.asarray(positions, dtype=numpy.int64).reshape(-1)
        if n.size and n.min() < 0:
            raise ValueError("sample positions must be >= 0")
        q = self.segment_of(n)
        j = (n - self.start[q]).astype(numpy.float64)[:, None]
        constant = self.weight[q] * j
        ramp = j * (self.weight[q] + self.slope[q] * j)
        within = numpy.where(self.linear[q].astype(bool)[:, None], ramp, constant)
        return self.base[q] + within


def normalise(weights: Sequence[float]) -> numpy.ndarray:
    """Normalise exactly as megatron.core.datasets.utils.normalize does (same doubles)."""
    w = numpy.array(weights, dtype=numpy.float64)
    return w / numpy.sum(w)


@dataclass(frozen=True)
class BlendSchedule:
    sources: tuple[str, ...]
    phases: tuple[Phase, ...]
    origin: Optional[str] = field(default=None, compare=False, repr=False)  # file, for errors

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "phases", tuple(self.phases))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, where: str, message: str) -> ScheduleError:
        prefix = f"{self.origin}: " if self.origin else ""
        return ScheduleError(f"{prefix}{where}: {message}")

    def _validate(self) -> None:
        if not self.sources:
            raise self._fail("sources", "at least one source is needed")
        if len(self.sources) > MAX_SOURCES:
            raise self._fail("sources", f"{len(self.sources)} sources; Megatron's int16 index allows {MAX_SOURCES}")
        seen = set()
        for i, name in enumerate(self.sources):
            if not isinstance(name, str) or not name:
                raise self._fail(f"sources[{i}]", f"a source name must be a non-empty string, got {name!r}")
            if name in seen:
                raise self._fail(f"sources[{i}]", f"duplicate source {name!r}")
            seen.add(name)
        if not self.phases:
            raise self._fail("phases", "at least one phase is needed")
        for i, phase in enumerate(self.phases):
            where = f"phases[{i}]"
            if not _is_int(phase.start) or phase.start < 0:
                raise self._fail(f"{where}.start", f"must be a non-negative integer, got {phase.start!r}")
            if i == 0 and phase.start != 0:
                raise self._fail(f"{where}.start", f"the first phase must start at 0, got {phase.start}")
            if i > 0 and phase.start <= self.phases[i - 1].start:
                raise self._fail(
                    f"{where}.start",
                    f"{phase.start} does not come after phases[{i - 1}].start {self.phases[i - 1].start}",
                )
            self._check_weights(f"{where}.weights", phase.weights)
            if phase.end_weights is not None:
                self._check_weights(f"{where}.end_weights", phase.end_weights)
            if phase.end is not None:
                if phase.end_weights is None:
                    raise self._fail(f"{where}.end", "only a linear phase (one with end_weights) takes 'end'")
                if not _is_int(phase.end) or phase.end <= phase.start:
                    raise self._fail(f"{where}.end", f"must be an integer after start {phase.start}, got {phase.end!r}")
            elif phase.end_weights is not None and i == len(self.phases) - 1:
                raise self._fail(
                    f"{where}.end",
                    "the last phase is linear (has end_weights) but gives no 'end': add the sample "
                    "index where end_weights are reached (they hold after it), or drop end_weights",
                )

    def _check_weights(self, where: str, weights: Mapping[str, float]) -> None:
        if not isinstance(weights, Mapping):
            raise self._fail(where, f"must be a mapping source -> weight, got {type(weights).__name__}")
        for name, w in weights.items():
            if name not in self.sources:
                raise self._fail(where, f"unknown source {name!r} (sources: {', '.join(self.sources)})")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise self._fail(f"{where}[{name!r}]", f"weight must be a number, got {w!r}")
            if not math.isfinite(w):
                raise self._fail(f"{where}[{name!r}]", f"weight {w} is not finite")
            if w < 0:
                raise self._fail(f"{where}[{name!r}]", f"weight {w} is negative")
        if not any(w > 0 for w in weights.values()):
            raise self._fail(where, "all weights are zero; at least one source needs a positive weight")

    # ------------------------------------------------------------------ construction
    @classmethod
    def constant(cls, weights: Mapping[str, float]) -> "BlendSchedule":
        """One constant phase (what Megatron's static `--data-path` blend does)."""
        return cls(tuple(weights), (Phase(0, dict(weights)),))

    @classmethod
    def from_dict(cls, d: Any, origin: Optional[str] = None) -> "BlendSchedule":
        def fail(where, message):
            prefix = f"{origin}: " if origin else ""
            return ScheduleError(f"{prefix}{where}: {message}")

        if not isinstance(d, Mapping):
            raise fail("schedule", f"must be a mapping with 'sources' and 'phases', got {type(d).__name__}")
        unknown = set(d) - {"sources", "phases"}
        if unknown:
            raise fail("schedule", f"unknown keys {sorted(unknown)} (expected 'sources', 'phases')")
        for key in ("sources", "phases"):
            if key not in d:
                raise fail(key, "missing")
            if not isinstance(d[key], list):
                raise fail(key, f"must be a list, got {type(d[key]).__name__}")
        phases = []
        for i, p in enumerate(d["phases"]):
            if not isinstance(p, Mapping):
                raise fail(f"phases[{i}]", f"must be a mapping, got {type(p).__name__}")
            unknown = set(p) - {"start", "weights", "end_weights", "end"}
            if unknown:
                raise fail(f"phases[{i}]", f"unknown keys {sorted(unknown)} (expected start, weights, end_weights, end)")
            for key in ("start", "weights"):
                if key not in p:
                    raise fail(f"phases[{i}].{key}", "missing")
            phases.append(
                Phase(
                    start=p["start"],
                    weights=_as_weights(p["weights"]),
                    end_weights=_as_weights(p["end_weights"]) if p.get("end_weights") is not None else None,
                    end=p.get("end"),
                )
            )
        return cls(tuple(d["sources"]), tuple(phases), origin=origin)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BlendSchedule":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ScheduleError(f"{path}: cannot read schedule: {e.strerror}") from e
        try:
            if _is_yaml(path):
                import yaml

                d = yaml.safe_load(text)
            else:
                d = json.loads(text)
        except Exception as e:  # json.JSONDecodeError / yaml.YAMLError: report with the file name
            raise ScheduleError(f"{path}: not valid {'YAML' if _is_yaml(path) else 'JSON'}: {e}") from e
        return cls.from_dict(d, origin=path)

    def to_dict(self) -> dict:
        return {"sources": list(self.sources), "phases": [p.to_dict() for p in self.phases]}

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON (or YAML for .yaml/.yml) atomically (synpro_megatron.fsutil)."""
        path = os.fspath(path)
        if _is_yaml(path):
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        from synpro_megatron.fsutil import atomic_write_text

        atomic_write_text(path, text)

    def with_phase(
        self,
        start: int,
        weights: Mapping[str, float],
        end_weights: Optional[Mapping[str, float]] = None,
        end: Optional[int] = None,
    ) -> "BlendSchedule":
        """A new schedule with one more phase from `start` on (after every existing phase).

        Names not yet in `sources` are added (a new synthetic round). Indices before `start` are
        unchanged: a ramp that was still running at `start` is cut there.
        """
        new_sources = list(self.sources)
        for mapping in (weights, end_weights or {}):
            for name in mapping:
                if name not in new_sources:
                    new_sources.append(name)
        phase = Phase(int(start) if _is_int(start) else start, _as_weights(weights),
                      _as_weights(end_weights) if end_weights is not None else None, end)
        return BlendSchedule(tuple(new_sources), self.phases + (phase,), origin=self.origin)

    # ------------------------------------------------------------------ evaluation
    def describe(self) -> str:
        """Canonical JSON (keys sorted), used in cache hashes."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def segment_table(self) -> SegmentTable:
        K = len(self.sources)
        starts, linear, weight, slope, candidate = [], [], [], [], []
        for i, phase in enumerate(self.phases):
            next_start = self.phases[i + 1].start if i + 1 < len(self.phases) else None
            a = normalise(self._vector(phase.weights))
            if not phase.is_linear:
                starts.append(phase.start), linear.append(0), weight.append(a)
                slope.append(numpy.zeros(K)), candidate.append(a > 0)
                continue
            b = normalise(self._vector(phase.end_weights))
            ramp_end = phase.end if phase.end is not None else next_start
            ramp_length = ramp_end - phase.start
            starts.append(phase.start), linear.append(1), weight.append(a)
            slope.append((b - a) / (2.0 * ramp_length)), candidate.append((a > 0) | (b > 0))
            if next_start is None or ramp_end < next_start:  # end_weights hold after the ramp
                starts.append(ramp_end), linear.append(0), weight.append(b)
                slope.append(numpy.zeros(K)), candidate.append(b > 0)
        start = numpy.array(starts, dtype=numpy.int64)
        weight = numpy.array(weight, dtype=numpy.float64).reshape(-1, K)
        slope = numpy.array(slope, dtype=numpy.float64).reshape(-1, K)
        base = numpy.zeros_like(weight)
        for q in range(1, len(starts)):  # T at each segment start, from the previous segment only
            length = float(start[q] - start[q - 1])
            if linear[q - 1]:
                within = length * (weight[q - 1] + slope[q - 1] * length)
            else:
                within = weight[q - 1] * length
            base[q] = base[q - 1] + within
        return SegmentTable(
            start=start,
            linear=numpy.array(linear, dtype=numpy.uint8),
            candidate=numpy.array(candidate, dtype=numpy.uint8).reshape(-1, K),
            weight=weight,
            slope=slope,
            base=base,
        )

    def cumulative_targets(self, positions: Iterable[int]) -> numpy.ndarray:
        """T_k(n) per position n: float64 [len(positions), K]."""
        return self.segment_table().cumulative(positions)

    def target_counts(self, num_samples: int) -> dict[str, float]:
        """T_k(num_samples) per source name."""
        return dict(zip(self.sources, self.cumulative_targets([num_samples])[0].tolist()))

    def _vector(self, weights: Mapping[str, float]) -> list[float]:
        return [float(weights.get(name, 0.0)) for name in self.sources]


def _as_weights(w: Any) -> Any:
    # Keep non-mappings as they are so validation reports them with the field name.
    return dict(w) if isinstance(w, Mapping) else w


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, numpy.integer)) and not isinstance(x, bool)


def _is_yaml(path: str) -> bool:
    return path.lower().endswith((".yaml", ".yml"))
