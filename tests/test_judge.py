"""The LLM judge and the model-based quality scorer, for real through the transformers backend with
the offline SmolLM2-135M as a stand-in for the GPU judge (its verdicts need not be good; the prompts,
batching, parsing and label mapping must be right), and their wiring from the CLI and loop config."""
import pytest

from synpro_megatron.rewards import FaithfulnessConfig, QualityConfig, faithfulness, quality_reward
from synpro_megatron.rewards.judge import (JUDGE_TEMPLATE, LABELS, LLMJudge, LLMQualityScorer, parse_label,
                                           parse_overall_score)

SOURCE = ("The Golden Gate Bridge opened in May 1937. Its main span is 1,280 metres long, and it was the longest "
          "suspension bridge in the world until 1964.")


def test_label_and_score_parsing():
    assert parse_label("Faithful") == "Faithful"
    assert parse_label("Label: Unfaithful_Content.") == "Unfaithful_Content"
    assert parse_label("unfaithful topic") == "Unfaithful_Topic"
    assert parse_label("**Unfaithful-Content** because the year changed") == "Unfaithful_Content"
    assert parse_label("I think it is faithful to the source") == "Faithful"
    assert parse_label("The bridge is red.") is None
    assert parse_overall_score("Overall Score: 4") == 4
    assert parse_overall_score("I would give it 3/5") == 3
    assert parse_overall_score("5") == 5
    assert parse_overall_score("no idea") is None


@pytest.fixture(scope="module")
def smollm2_backend():
    from synpro_megatron.generators.backends import HFBackend

    return HFBackend(batch_size=4)


@pytest.mark.slow
def test_judge_and_quality_scorer_run_through_the_hf_backend(smollm2_backend):
    judge = LLMJudge(smollm2_backend, batch_units=2, max_new_tokens=6)
    units = ["The Golden Gate Bridge opened in May 1937.", "Its main span is 2,000 metres long.",
             "It was the longest suspension bridge until 1964."]
    messages = judge.messages(SOURCE, units[1])
    assert messages[0]["role"] == "system" and SOURCE in messages[1]["content"] and units[1] in messages[1]["content"]
    assert messages[1]["content"] == JUDGE_TEMPLATE.format(source=SOURCE, unit=units[1], unit_name="a sentence of a rewrite")
    labels = judge.judge_units([(SOURCE, u) for u in units])  # two batches: 2 + 1
    assert len(labels) == 3 and all(lab in LABELS for lab in labels)
    share = judge(SOURCE, "\n".join(units), units=units)
    assert share == sum(lab == "Faithful" for lab in judge.judge_units([(SOURCE, u) for u in units])) / 3

    scorer = LLMQualityScorer(smollm2_backend, batch_size=2, max_new_tokens=8)
    scores = scorer([SOURCE, "buy now click here buy now", SOURCE.upper()])
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert len(scorer.last_unparsed) <= 3


@pytest.mark.slow
def test_judge_and_scorer_are_reached_from_the_configs(smollm2_backend):
    path = smollm2_backend.path
    result = faithfulness(SOURCE, "Opened in May 1937, the Golden Gate Bridge has a 1,280-metre main span; no "
                                  "suspension bridge was longer until 1964.",
                          config=FaithfulnessConfig(judge_model=path, judge_backend="hf", verifier="off"))
    assert 0.0 <= result.details["judge"] <= 1.0 and "verifier_labels" not in result.details
    delta = quality_reward([SOURCE], [SOURCE + " It is painted International Orange."],
                           QualityConfig(classifier_model=path, classifier_backend="hf"))
    assert len(delta) == 1 and -1.0 <= delta[0] <= 1.0


def test_cli_and_loop_config_carry_the_model_flags():
    from synpro_megatron.cli import build_parser
    from synpro_megatron.loop.config import GeneratorConfig
    from synpro_megatron.rewards.cli import reward_configs

    args = build_parser().parse_args(["train-generator", "--kind", "rephrase", "--run-dir", "r", "--judge-model",
                                      "/models/qwen3-judge", "--quality-model", "/models/dataman", "--verifier", "off"])
    faith, quality = reward_configs(args)
    assert faith.judge_model == "/models/qwen3-judge" and faith.verifier == "off"
    assert quality.classifier_model == "/models/dataman"
    args = build_parser().parse_args(["synthesize", "--kind", "reformat", "--run-dir", "r", "--round", "1",
                                      "--judge-model", "/models/qwen3-judge"])
    assert reward_configs(args)[0].judge_model == "/models/qwen3-judge"
    gen = GeneratorConfig(judge_model="/models/qwen3-judge", quality_model="/models/dataman")
    assert gen.reward_model_args("train") == ["--judge-model", "/models/qwen3-judge", "--quality-model", "/models/dataman"]
    assert gen.reward_model_args("synth") == ["--judge-model", "/models/qwen3-judge"]
    gen = GeneratorConfig(verifier="train", verifier_rejects=True)  # the default verifier, built first when missing
    assert gen.reward_model_args("synth") == ["--verifier", "train", "--verifier-rejects"] == gen.reward_model_args("train")
    args = build_parser().parse_args(["synthesize", "--kind", "reformat", "--run-dir", "r", "--round", "1",
                                      *gen.reward_model_args("synth")])
    assert reward_configs(args)[0].verifier == "train" and reward_configs(args)[0].verifier_rejects
