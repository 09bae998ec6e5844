"""All rewards as one TRL reward function: normalise within the group, weight, sum, gate.

For each completion we compute the raw rewards
    faithfulness (the gate and its 0-1 score), quality (output - source), format,
    influence (output - source; only for completions that pass the gate: it is the expensive one
    and it is hackable by unfaithful text, see research/generators.md B.7).
Within each GRPO group (the completions of one prompt) every reward is z-scored over the
completions that passed the gate (population std; a zero-std group gives 0), then

    passed: reward = bonus + w_infl * z_infl + w_qual * z_qual + w_fmt * z_fmt
    failed: reward = soft - 1,  soft = weighted mean of (faithfulness score, format, length) in [0, 1)

with bonus = sum(w) * sqrt(G - 1) + 1. A z-score within a group of G is at most sqrt(G - 1) in
size, so every completion that passes scores >= 1 and every one that fails scores in [-1, 0):
failing the gate is always worse than the worst faithful rewrite. Failures still differ from each
other, by how faithful (the gate's soft score: fewer findings, higher alignment), how well formed and
how well sized they are, so a group in which nothing passes still has a gradient (the paper sums
its reward terms; an all-zero group would teach nothing). When the whole group passes, the bonus is
a constant that GRPO's own group normalisation removes.

It is one function (not one per reward with TRL's reward_weights) because a gate must multiply.
Raw rewards are logged through TRL's `log_metric` and kept in `history` for the reward log.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from synpro_megatron.formats import check_kind, output_units, parse_output
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig, faithfulness_batch
from synpro_megatron.rewards.format import format_reward
from synpro_megatron.rewards.influence import InfluenceReward
from synpro_megatron.rewards.quality import QualityConfig, quality_reward

RAW_REWARD_KEYS = ("faithfulness", "gate_pass_rate", "quality", "format", "influence")


@dataclass
class RewardWeights:
    influence: float = 3.0
    quality: float = 1.0
    format: float = 1.0
    # the soft terms that rank completions failing the gate
    soft_faithfulness: float = 2.0
    soft_format: float = 1.0
    soft_length: float = 1.0


def length_term(ratio: Optional[float], bounds: tuple) -> float:
    """1 inside the kind's length-ratio bounds, falling off outside them; 0 when unknown."""
    if ratio is None or ratio <= 0:
        return 0.0
    lo, hi = bounds
    return min(1.0, ratio / lo) if ratio < lo else (min(1.0, hi / ratio) if ratio > hi else 1.0)


def zscore(values: Sequence[float]) -> list[float]:
    if not values:
        return []
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if std < 1e-12:
        return [0.0] * len(values)
    return [(v - mean) / std for v in values]


def _gather_across_ranks(rows: list) -> tuple[list, int]:
    """All ranks' rows in rank order, and where this rank's rows start. TRL may split one prompt's
    group across processes, so normalising per group needs the whole batch."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return rows, 0
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows, 0
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    start = sum(len(g) for g in gathered[:dist.get_rank()])
    return [r for g in gathered for r in g], start


class CombinedReward:
    """TRL reward function: reward(prompts, completions, source=[...], doc_id=[...], **kw)."""

    def __init__(self, kind: str, influence=None, weights: Optional[RewardWeights] = None,
                 faithfulness_config: Optional[FaithfulnessConfig] = None,
                 quality_config: Optional[QualityConfig] = None):
        self.kind = check_kind(kind)
        if influence is not None and not isinstance(influence, InfluenceReward):
            influence = InfluenceReward(influence)  # any object with .score(texts)
        self.influence = influence
        self.weights = weights or RewardWeights()
        self.faithfulness_config = faithfulness_config or FaithfulnessConfig()
        self.quality_config = quality_config or QualityConfig()
        self.history: list[dict] = []  # one entry per call (= per generation batch)
        self.__name__ = f"synpro_{kind}"  # TRL names reward columns after __name__

    # ---------------------------------------------------------------------------------- raw
    def raw_rewards(self, sources: Sequence[str], completions: Sequence) -> list[dict]:
        outputs = [parse_output(self.kind, c) for c in completions]
        units = [output_units(self.kind, c) for c in completions]
        gate = faithfulness_batch(sources, outputs, kind=self.kind, config=self.faithfulness_config, units=units)
        quality = quality_reward(sources, outputs, self.quality_config)
        bounds = self.faithfulness_config.length_ratio[self.kind]
        rows = [{"passed": g.passed, "faithfulness": g.score, "quality": q,
                 "format": format_reward(self.kind, c), "influence": None, "reasons": g.reasons,
                 "length": length_term(g.details.get("length_ratio"), bounds)}
                for g, q, c in zip(gate, quality, completions)]
        if self.influence is not None:
            idx = [i for i, r in enumerate(rows) if r["passed"]]
            if idx:
                values = self.influence([sources[i] for i in idx], [outputs[i] for i in idx])
                for i, v in zip(idx, values):
                    rows[i]["influence"] = v
        return rows

    # ---------------------------------------------------------------------------------- combine
    def combine(self, rows: list[dict], group_keys: Sequence) -> list[float]:
        w = self.weights
        terms = [("quality", w.quality), ("format", w.format)]
        if self.influence is not None:
            terms.append(("influence", w.influence))
        groups: dict = {}
        for i, key in enumerate(group_keys):
            groups.setdefault(key, []).append(i)
        combined = [0.0] * len(rows)
        soft_w = (w.soft_faithfulness, w.soft_format, w.soft_length)
        for members in groups.values():
            for i in members:
                if not rows[i]["passed"]:
                    r = rows[i]
                    soft = (soft_w[0] * float(r["faithfulness"]) + soft_w[1] * float(r["format"])
                            + soft_w[2] * float(r.get("length", 0.0))) / max(1e-9, sum(soft_w))
                    combined[i] = min(soft, 1.0 - 1e-6) - 1.0  # in [-1, 0): below every pass
            passers = [i for i in members if rows[i]["passed"]]
            if not passers:
                continue
            bonus = sum(abs(wt) for _, wt in terms) * math.sqrt(len(members) - 1) + 1.0
            total = {i: bonus for i in passers}
            for name, wt in terms:
                for i, z in zip(passers, zscore([float(rows[i][name]) for i in passers])):
                    total[i] += wt * z
            for i in passers:
                combined[i] = total[i]
        return combined

    def score(self, sources: Sequence[str], completions: Sequence, group_keys: Optional[Sequence] = None):
        """(combined rewards, raw reward rows) for completions of the given sources."""
        if len(sources) != len(completions):
            raise ValueError(f"{len(sources)} sources but {len(completions)} completions")
        keys = list(group_keys) if group_keys is not None else [
            hashlib.sha1(s.encode("utf-8", "replace")).hexdigest() for s in sources]
        rows = self.raw_rewards(sources, completions)
        payload = [dict(r, key=k) for r, k in zip(rows, keys)]
        everything, start = _gather_across_ranks(payload)
        combined = self.combine(everything, [r["key"] for r in everything])
        return combined[start:start + len(rows)], rows

    def __call__(self, prompts=None, completions=None, source=None, doc_id=None, log_metric=None, **kwargs):
        if source is None:
            raise ValueError("the synpro reward needs a `source` dataset column (the document being rewritten)")
        combined, rows = self.score(list(source), list(completions), doc_id)
        summary = self.summarise(rows, combined)
        self.history.append(summary)
        if log_metric is not None:
            for name, value in summary.items():
                if value is not None and name != "completions":
                    log_metric(f"synpro/{name}", value)
        return combined

    @staticmethod
    def summarise(rows: list[dict], combined: Sequence[float]) -> dict:
        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else None

        return {
            "faithfulness": mean(r["faithfulness"] for r in rows),
            "gate_pass_rate": mean(float(r["passed"]) for r in rows),
            "quality": mean(r["quality"] for r in rows),
            "format": mean(r["format"] for r in rows),
            "influence": mean(r["influence"] for r in rows),  # over completions that passed
            "combined": mean(combined),
            "completions": len(rows),
        }

    def drain_history(self) -> list[dict]:
        entries, self.history = self.history, []
        return entries


def trl_reward_functions(kind: str, influence=None, faithfulness_config: Optional[FaithfulnessConfig] = None,
                         quality_config: Optional[QualityConfig] = None) -> dict:
    """Each raw reward on its own as a TRL reward function (callable(prompts, completions, source,
    **kw) -> list[float]), for experiments with TRL's own `reward_weights` aggregation.
    The synpro training uses CombinedReward instead (the gate must multiply)."""
    check_kind(kind)
    faith_cfg = faithfulness_config or FaithfulnessConfig()
    qual_cfg = quality_config or QualityConfig()
    infl = influence if influence is None or isinstance(influence, InfluenceReward) else InfluenceReward(influence)

    def faithfulness_reward(prompts=None, completions=None, source=None, **kw):
        outputs = [parse_output(kind, c) for c in completions]
        units = [output_units(kind, c) for c in completions]
        res = faithfulness_batch(source, outputs, kind=kind, config=faith_cfg, units=units)
        return [r.score if r.passed else 0.0 for r in res]

    def quality_delta_reward(prompts=None, completions=None, source=None, **kw):
        return quality_reward(source, [parse_output(kind, c) for c in completions], qual_cfg)

    def format_only_reward(prompts=None, completions=None, **kw):
        return [format_reward(kind, c) for c in completions]

    funcs = {"faithfulness": faithfulness_reward, "quality": quality_delta_reward, "format": format_only_reward}
    if infl is not None:
        def influence_reward(prompts=None, completions=None, source=None, **kw):
            return infl(source, [parse_output(kind, c) for c in completions])

        funcs["influence"] = influence_reward
    return funcs
