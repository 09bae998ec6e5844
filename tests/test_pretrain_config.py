"""Pretraining config: CLI round trip, validation errors, model shapes."""
import argparse
import re

import pytest

from synpro_megatron.pretrain.config import MODEL_CONFIGS, PretrainConfig, get_model_config
from synpro_megatron.pretrain.launch import add_pretrain_args, config_from_args, config_to_args


def parse(argv):
    p = argparse.ArgumentParser()
    add_pretrain_args(p)
    return config_from_args(p.parse_args(argv))


def test_cli_round_trip():
    cfg = PretrainConfig(run_dir="/r", data="/d", model="400m", hidden_size=64, tp=2, pp=2, lr=1e-3, bf16=True,
                         blend_schedule="/s.json", synthetic={"round1_rephrase": "/x", "round1_reformat": "/y"},
                         stop_at_sample=8, resume=True, seq_length=128)
    assert parse(config_to_args(cfg)) == cfg


@pytest.mark.parametrize("kw, world, message", [
    ({"tp": 2}, 3, "world size 3 is not divisible by tp*pp"),
    ({"global_batch": 6, "micro_batch": 4}, 1, "global_batch 6 must be a multiple of micro_batch*dp"),
    ({"pp": 3}, 3, "num_layers 4 is not divisible by pp 3"),
    ({"tp": 8}, 8, "num_attention_heads 4 is not divisible by tp 8"),
])
def test_layout_errors_name_the_field(kw, world, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PretrainConfig(run_dir="/r", data="/d", **kw).validate(world)


def test_unknown_field_and_bad_synthetic():
    with pytest.raises(ValueError, match="unknown pretrain config field"):
        PretrainConfig.from_dict({"run_dir": "/r", "data": "/d", "hiden_size": 3})
    with pytest.raises(ValueError, match="NAME=PREFIX"):
        parse(["--data", "/d", "--run-dir", "/r", "--synthetic", "nope"])


def test_paper_shapes():
    for name, hidden in (("400m", 1024), ("1b", 2048)):
        mc = get_model_config(name)
        assert (mc.num_layers, mc.hidden_size, mc.num_attention_heads) == (16, hidden, 16)
        assert mc.ffn_hidden_size == 4 * hidden  # SwiGLU: gated width 4x hidden
    # about 0.27B / 1.07B non-embedding parameters, as in the paper's configs
    assert get_model_config("400m").num_params(0) == pytest.approx(0.25e9, rel=0.15)
    assert get_model_config("1b").num_params(0) == pytest.approx(1.0e9, rel=0.15)
    with pytest.raises(ValueError, match="unknown model config"):
        get_model_config("7b")
    assert set(MODEL_CONFIGS) == {"tiny", "400m", "1b"}


def test_train_dataset_uses_every_document(tmp_path):
    """Regression: a GPTDatasetConfig built without a blend is turned into a mock config by
    megatron-core, with split "1,1,1": the train split was a third of the documents."""
    from synpro_megatron.blending.dataset import build_source_datasets
    from synpro_megatron.data.indexed import write_indexed_dataset
    from synpro_megatron.data.tokenizer import load_tokenizer
    from synpro_megatron.pretrain.data import build_gpt_dataset, gpt_dataset_config

    tok = load_tokenizer(None)
    docs = [[5 + i, 6 + i, 7 + i, 8 + i, tok.eod] for i in range(9)]
    write_indexed_dataset(str(tmp_path / "nine"), docs, tok.vocab_size)
    write_indexed_dataset(str(tmp_path / "one"), docs[:1], tok.vocab_size)
    config = gpt_dataset_config(tok, 4, 1, str(tmp_path / "cache"))
    assert config.split_matrix[0] == (0, 1.0) and not config.mock
    ds = build_gpt_dataset(str(tmp_path / "nine"), 20, config, True)
    assert sorted(ds.indices.tolist()) == list(range(9))
    # a synthetic round of a single document is a usable blend source
    one = build_source_datasets({"r1": str(tmp_path / "one")}, {"r1": 4}, config)["r1"]
    assert one.indices.tolist() == [0]
