"""Build the megatron-core GPTModel for a ModelConfig on this rank's pipeline stage."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # noqa: BLE001 - TE raises RuntimeError (not ImportError) when broken
        return False
    return torch.cuda.is_available()


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    # Megatron splits the vocabulary across TP ranks; pad like megatron.training does.
    step = multiple * tp
    return ((vocab_size + step - 1) // step) * step


def transformer_config(model_cfg, tp: int, pp: int, *, dropout: float = 0.0, bf16: bool = False):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        add_bias_linear=False,
        qk_layernorm=True,
        hidden_dropout=dropout,
        attention_dropout=dropout,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        # CPU init builds the full master weight and slices it, so TP=2 starts from TP=1's weights.
        use_cpu_initialization=True,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        bf16=bf16,
        init_method_std=0.02,
    )


def build_gpt_model(model_cfg, vocab_size: int, tp: int, pp: int, *, dropout: float = 0.0, bf16: bool = False):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    config = transformer_config(model_cfg, tp, pp, dropout=dropout, bf16=bf16)
    if have_transformer_engine():
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    else:
        spec = get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm")
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(vocab_size, tp),
        max_sequence_length=model_cfg.seq_length,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_base=int(model_cfg.rope_base),
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model, config
