"""Rewards for the generators: faithfulness (a gate), quality, influence, format, and their
combination into one GRPO reward. Each is a plain function over (source, output); `combine`
turns them into a TRL reward function that reads the `source` dataset column.

The gate combines structured checks (checks.py), a trained cross-encoder verifier (verifier.py,
`synpro train-verifier`) and, on GPU, an optional LLM judge (judge.py). The rewards never import
the generators: the shared prompt texts and parsers live in `synpro_megatron.formats`.

Note: `synpro_megatron.rewards.faithfulness` is the gate *function*; import helpers from the
module with `from synpro_megatron.rewards.faithfulness import ...`.
"""
from synpro_megatron.rewards.combine import (RAW_REWARD_KEYS, CombinedReward, RewardWeights, trl_reward_functions,
                                             zscore)
from synpro_megatron.rewards.faithfulness import (FaithfulnessConfig, FaithfulnessResult, faithfulness,
                                                  faithfulness_batch)
from synpro_megatron.rewards.checks import Finding, coverage, structured_findings
from synpro_megatron.rewards.format import format_reward, format_rewards
from synpro_megatron.rewards.influence import InfluenceReward, InfluenceScorer
from synpro_megatron.rewards.quality import QualityConfig, QualityResult, heuristic_quality, quality_reward

__all__ = [
    "CombinedReward", "RewardWeights", "RAW_REWARD_KEYS", "trl_reward_functions", "zscore",
    "FaithfulnessConfig", "FaithfulnessResult", "faithfulness", "faithfulness_batch",
    "format_reward", "format_rewards", "InfluenceReward", "InfluenceScorer",
    "QualityConfig", "QualityResult", "heuristic_quality", "quality_reward", "Finding", "coverage",
    "structured_findings",
]
