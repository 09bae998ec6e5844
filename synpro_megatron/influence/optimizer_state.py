"""What the optimizer would do at a checkpoint: its learning rate and Adam's preconditioner.

* ``checkpoint_lr``: the learning rate of the step that would follow the checkpoint, from the run's
  schedule (warm-up, decay) at the checkpoint's step, the same ``OptimizerParamScheduler`` the trainer
  steps (not the peak ``lr`` of the config: during warm-up or late in a cosine decay they differ by
  orders of magnitude).
* ``adam_preconditioners``: per hooked linear layer, ``1 / (sqrt(v̂) + eps)`` with v̂ the
  bias-corrected second moment (``exp_avg_sq``) the checkpoint's Adam state holds, in the TP=1 layout.
  LESS-style: an Adam step on a text moves the weights by about ``-lr * g / (sqrt(v̂) + eps)`` (v̂
  barely moves in one step, and the first moment is taken as the text's own gradient), so the
  predicted reference-loss drop is ``lr * <g / (sqrt(v̂) + eps), g_ref> = lr * <g, D ⊙ g_ref>``:
  the preconditioner can be folded into the reference gradient once, and the per-text path is
  unchanged (same projections, same kernel).
"""
from __future__ import annotations

import types
from typing import Dict

import torch


def _scheduler(cfg, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gbs = cfg.global_batch
    # The same arguments as pretrain.trainer.build_model_and_optimizer (tests compare the result
    # with the lr the trainer logged at the checkpoint's step).
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr,
        lr_warmup_steps=min(cfg.lr_warmup_steps, max(cfg.max_steps - 1, 0)) * gbs,
        lr_decay_steps=max(cfg.max_steps, 1) * gbs, lr_decay_style=cfg.lr_decay_style,
        start_wd=cfg.weight_decay, end_wd=cfg.weight_decay, wd_incr_steps=max(cfg.max_steps, 1) * gbs,
        wd_incr_style="constant")


def checkpoint_lr(cfg, step: int) -> float:
    """The learning rate the trainer uses for step ``step + 1`` of the run configured by ``cfg``."""
    fake = types.SimpleNamespace(param_groups=[{"lr": 0.0, "weight_decay": 0.0}])
    sched = _scheduler(cfg, fake)
    if step:
        sched.step(increment=step * cfg.global_batch)
    return float(fake.param_groups[0]["lr"])


def adam_preconditioners(checkpoint: str, layer_names, vocab_size: int) -> Dict[str, torch.Tensor]:
    """Layer name -> this rank's (d_out_local, d_in_local) ``1 / (sqrt(v̂) + eps)`` from the
    checkpoint's optimizer state (loads a second model + optimizer once, then frees them)."""
    import dataclasses

    from synpro_megatron.influence.hooks import canonical_layer_name
    from synpro_megatron.pretrain.checkpoint import load_checkpoint, resolve_checkpoint
    from synpro_megatron.pretrain.inference import run_config_for_checkpoint
    from synpro_megatron.pretrain.trainer import build_model_and_optimizer

    path = resolve_checkpoint(checkpoint)
    cfg = dataclasses.replace(run_config_for_checkpoint(path), tp=1, pp=1)
    gpt, _, opt, _, _ = build_model_and_optimizer(cfg, vocab_size)
    extra = load_checkpoint(path, gpt, opt, None)
    step = int(extra.get("step", 0))
    inner = getattr(opt, "optimizer", opt)
    eps = inner.param_groups[0].get("eps", 1e-8)
    beta2 = inner.param_groups[0]["betas"][1]
    correction = 1.0 - beta2 ** max(step, 1)
    wanted = set(layer_names)
    # bf16 runs: Adam's state is keyed by the fp32 main copy of each bf16 weight
    main_of = {}
    for model_group, main_group in zip(getattr(opt, "float16_groups", []), getattr(opt, "fp32_from_float16_groups", [])):
        main_of.update({id(p): m for p, m in zip(model_group, main_group)})
    out = {}
    for module_name, module in gpt.named_modules():
        name = canonical_layer_name(gpt, module_name)
        if name not in wanted:
            continue
        state = inner.state.get(main_of.get(id(module.weight), module.weight), {})
        v = state.get("exp_avg_sq")
        if v is None:
            raise RuntimeError(f"{path}: no Adam second moment for {name} (was the optimizer state saved?)")
        out[name] = (1.0 / ((v.detach().float() / correction).sqrt() + eps)).cpu()
    del gpt, opt
    return out
