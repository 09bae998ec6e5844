"""Load a pretraining checkpoint for scoring (evaluation, influence), outside the training loop.

A checkpoint directory (run_dir/checkpoints/iter_N) sits two levels under the run dir, whose
pretrain_config.json says which model shape and tokenizer it has. Loading works at any TP/PP
layout (distributed checkpoints store global tensors); a plain process gets a one-rank gloo group.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from synpro_megatron.pretrain.checkpoint import load_checkpoint, resolve_checkpoint
from synpro_megatron.pretrain.config import PretrainConfig


@dataclass
class LoadedModel:
    model: torch.nn.Module  # the unwrapped megatron-core GPTModel (this rank's stage/shard)
    tokenizer: object
    config: PretrainConfig
    checkpoint: str
    step: int


def run_config_for_checkpoint(checkpoint: str) -> PretrainConfig:
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    path = os.path.join(run_dir, "pretrain_config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{checkpoint}: expected the run's config at {path}")
    with open(path, encoding="utf-8") as f:
        return PretrainConfig.from_dict(json.load(f))


def load_for_inference(checkpoint: str, tp: int = 1, pp: int = 1, seed: int = 1234) -> LoadedModel:
    from synpro_megatron.data.prepare import load_meta
    from synpro_megatron.data.tokenizer import load_tokenizer
    from synpro_megatron.pretrain.model import build_gpt_model
    from synpro_megatron.pretrain.trainer import init_distributed

    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    path = resolve_checkpoint(checkpoint)
    cfg = run_config_for_checkpoint(path)
    init_distributed(tp, pp, seed)
    tok_name = cfg.tokenizer
    if tok_name is None and os.path.exists(cfg.data + ".meta.json"):
        tok_name = load_meta(cfg.data).get("tokenizer")
    tokenizer = load_tokenizer(tok_name)
    model, _ = build_gpt_model(cfg.model_config(), tokenizer.vocab_size, tp, pp, dropout=0.0, bf16=False)
    extra = load_checkpoint(path, model)
    model.eval()
    return LoadedModel(model, tokenizer, cfg, path, int(extra.get("step", 0)))


def token_losses(model, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [batch, seq] of a single-stage (PP=1) GPTModel."""
    position_ids = torch.arange(tokens.shape[1], device=tokens.device).unsqueeze(0).expand_as(tokens)
    return model(tokens, position_ids, None, labels=labels)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, max_len: Optional[int] = None):
    """Right-pad token lists to one [B, L] tensor; returns (tokens, lengths)."""
    lengths = [min(len(s), max_len) if max_len else len(s) for s in seqs]
    width = max(lengths)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lengths)):
        out[i, :n] = torch.as_tensor(list(s)[:n], dtype=torch.long)
    return out, lengths


def sequence_logprobs(model, contexts: List[List[int]], continuations: List[List[int]], pad_id: int,
                      max_len: int) -> List[float]:
    """log p(continuation | context) summed over continuation tokens, for each pair (left-truncated)."""
    seqs, starts = [], []
    for ctx, cont in zip(contexts, continuations):
        full = list(ctx) + list(cont)
        full = full[-(max_len + 1):]
        seqs.append(full)
        starts.append(len(full) - len(cont))
    batch, lengths = pad_batch(seqs, pad_id)
    batch = batch.to(next(model.parameters()).device)
    inputs, labels = batch[:, :-1], batch[:, 1:]
    with torch.no_grad():
        losses = token_losses(model, inputs, labels)
    out = []
    for i, (start, n) in enumerate(zip(starts, lengths)):
        # label position j predicts token j+1; continuation tokens sit at [start, n)
        out.append(-float(losses[i, start - 1:n - 1].sum()))
    return out
