"""Data-influence reward: how much more a rewrite helps the current pretraining model than its source.

The reward works with any scorer object that has `.score(texts) -> tensor/list` (higher = more
useful for the model's reference-set loss). In production that is
`synpro_megatron.influence.InfluenceProbe(checkpoint, reference_set)` at the plateau checkpoint.
"""
from __future__ import annotations

import hashlib
from typing import Protocol, Sequence


class InfluenceScorer(Protocol):
    def score(self, texts: Sequence[str]): ...


def _as_floats(values, n: int, what: str) -> list[float]:
    try:
        import torch

        if isinstance(values, torch.Tensor):
            values = values.detach().float().cpu().reshape(-1).tolist()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    values = [float(v) for v in values]
    if len(values) != n:
        raise ValueError(f"influence scorer returned {len(values)} scores for {n} {what}")
    return values


class InfluenceReward:
    """influence(output) - influence(source). Source scores are cached by content, because a
    GRPO group scores one source against many outputs, and sources recur across steps."""

    def __init__(self, scorer: InfluenceScorer, cache_size: int = 100_000):
        if not hasattr(scorer, "score"):
            raise TypeError(f"{type(scorer).__name__} has no .score(texts) method")
        self.scorer = scorer
        self.cache_size = cache_size
        self._source_scores: dict[str, float] = {}

    def source_scores(self, sources: Sequence[str]) -> list[float]:
        keys = [hashlib.sha1(s.encode("utf-8", "replace")).hexdigest() for s in sources]
        todo: dict[str, str] = {}
        for k, s in zip(keys, sources):
            if k not in self._source_scores:
                todo.setdefault(k, s)
        if todo:
            fresh = _as_floats(self.scorer.score(list(todo.values())), len(todo), "sources")
            if len(self._source_scores) + len(fresh) > self.cache_size:
                self._source_scores.clear()
            self._source_scores.update(zip(todo.keys(), fresh))
        return [self._source_scores[k] for k in keys]

    def __call__(self, sources: Sequence[str], outputs: Sequence[str]) -> list[float]:
        if len(sources) != len(outputs):
            raise ValueError(f"{len(sources)} sources but {len(outputs)} outputs")
        if not outputs:
            return []
        out = _as_floats(self.scorer.score(list(outputs)), len(outputs), "outputs")
        return [o - s for o, s in zip(out, self.source_scores(sources))]
