"""GRPO on CPU with the offline SmolLM2 and all four rewards: a few real TRL steps, logged and saved."""
import dataclasses
import json
import os

import pytest

from gradient_dot_scorer import GradientDotScorer
from synpro_megatron.rl import GRPORunConfig, read_reward_log, train_generator
from synpro_megatron.rl.grpo import REWARD_LOG_KEYS


def tiny_influence_scorer():
    """A real gradient-alignment scorer over a freshly initialised 2-layer Llama (SmolLM2's
    tokenizer), with two reference texts: small enough to score 8 completions in a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    reference = ["The school board approved new construction funding for schools.",
                 "The company paid a termination fee after the merger was blocked by a judge."]
    return GradientDotScorer(model, tok, reference, lr=1e-3, max_tokens=128)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grpo_two_steps_logs_every_reward_and_saves(tmp_path):
    cfg = GRPORunConfig(kind="rephrase", run_dir=str(tmp_path), round=1, steps=2, num_prompts=2,
                        num_generations=2, prompts_per_device=2, max_completion_length=24,
                        max_source_tokens=64, min_source_chars=150)
    out = train_generator(cfg, influence_scorer=tiny_influence_scorer())
    assert out == tmp_path / "rounds" / "round_1" / "generators" / "rephrase"  # the generator's one home

    log = read_reward_log(str(out))
    assert [line["step"] for line in log] == [1, 2]
    for line in log:
        for key in REWARD_LOG_KEYS:
            assert key in line, f"reward log misses {key}: {line}"
        assert line["completions"] == 4
        assert 0.0 <= line["gate_pass_rate"] <= 1.0
        assert 0.0 <= line["format"] <= 1.0
        assert line["faithfulness"] is not None and line["quality"] is not None
        if line["gate_pass_rate"] > 0:  # influence is only scored for completions that pass the gate
            assert line["influence"] is not None
    # TensorBoard scalars were written for the run
    tb = tmp_path / "tensorboard" / "grpo-round_1-rephrase"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tb))

    # the saved generator loads and generates
    from synpro_megatron.generators import HFBackend, render_messages

    meta = json.loads((out / "synpro_generator.json").read_text())
    assert meta["steps"] == 2 and meta["influence"] is True
    # no prepared data in this run dir: the packaged sample, and the metadata says so
    assert meta["prompt_sources"].startswith("packaged:") and len(meta["prompt_doc_ids"]) == 2
    backend = HFBackend(str(out), batch_size=1)
    text = backend.generate([render_messages("rephrase", "A short note about dogs and cats.")], n=1,
                            max_new_tokens=4, seed=0)
    assert len(text) == 1 and len(text[0]) == 1


def test_prompt_sources_fit_the_completion_budget(tmp_path):
    """Long documents contribute their first piece, so every source can be rewritten whole."""
    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.prompts import source_of
    from synpro_megatron.generators.smollm2 import smollm2_path
    from synpro_megatron.rl.grpo import build_prompt_dataset

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    cfg = GRPORunConfig(kind="reformat", run_dir=str(tmp_path), num_prompts=16, max_source_tokens=48,
                        min_source_chars=120, few_shot=True)
    ds = build_prompt_dataset(cfg, tok)
    assert len(ds) == 16 and len(set(ds["doc_id"])) == 16
    for row in ds:
        assert 120 <= len(row["source"]) and len(tok.encode(row["source"], add_special_tokens=False)) <= 48
        assert source_of(row["prompt"]).strip() == row["source"].strip()
    assert build_prompt_dataset(cfg, tok)["doc_id"] == ds["doc_id"]  # seeded
    with pytest.raises(ValueError, match="prompts were asked for"):
        build_prompt_dataset(dataclasses.replace(cfg, min_source_chars=10_000), tok)


def test_prompts_come_from_the_runs_organic_pool_without_held_out(tmp_path, capsys):
    """With `synpro prepare` output in the run dir, GRPO prompts are the run's own training
    documents (never held-out ones, never the packaged sample), and the log says where they came from."""
    from synpro_megatron.data.prepare import PrepareConfig, prepare
    from synpro_megatron.generators.backends import load_generator_tokenizer
    from synpro_megatron.generators.smollm2 import smollm2_path
    from synpro_megatron.rl.grpo import build_prompt_dataset
    from synpro_megatron.rundir import RunDir
    from synpro_megatron.synthesis.sources import PACKAGED_SAMPLE, load_sources

    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:  # our own documents: ids no packaged sample has
        for d in load_sources(str(PACKAGED_SAMPLE))[:24]:
            f.write(json.dumps({"id": f"mine-{d.doc_id}", "text": d.text}) + "\n")
    run = RunDir(str(tmp_path / "run"))
    os.makedirs(os.path.dirname(run.organic_prefix))
    prepare(PrepareConfig(input=str(corpus), output=run.organic_prefix, held_out=0.3))
    train_ids = set(json.loads(open(run.organic_prefix + ".docids.json").read()))
    held_ids = set(json.loads(open(run.heldout_prefix + ".docids.json").read()))
    assert held_ids and train_ids

    tok = load_generator_tokenizer(str(smollm2_path(with_weights=False)))
    cfg = GRPORunConfig(kind="rephrase", run_dir=run.root, num_prompts=len(train_ids) // 2, max_source_tokens=48,
                        min_source_chars=50)
    ds = build_prompt_dataset(cfg, tok)
    assert set(ds["doc_id"]) <= train_ids and not set(ds["doc_id"]) & held_ids
    assert ds.info.description == f"run:{corpus}"
    assert "the run's organic pool" in capsys.readouterr().err
