"""The pretraining loop: megatron-core GPT, TP x PP x DP, readable in one sitting.

Run in every rank (torchrun). One step = one global batch, split into micro-batches that
`get_forward_backward_func()` pushes through the pipeline; Megatron's DDP reduces the gradients and
its optimizer steps. Resume state is (model, optimizer, LR schedule, consumed_samples): the data
order is a pure function of consumed_samples (see pretrain/data.py).
"""
from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from typing import Dict, List

import torch
import torch.distributed as dist

from synpro_megatron.fsutil import atomic_write_text
from synpro_megatron.pretrain import checkpoint as ckpt
from synpro_megatron.pretrain import data as pdata
from synpro_megatron.pretrain.config import PretrainConfig
from synpro_megatron.pretrain.metrics import MetricsWriter
from synpro_megatron.rundir import RunDir


# ----------------------------------------------------------------- distributed setup

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(tp: int, pp: int, seed: int) -> None:
    """Process group + Megatron model-parallel groups. Works under torchrun or as one plain process."""
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    cuda = torch.cuda.is_available()
    if not cuda:
        from synpro_megatron.pretrain.cpu_compat import enable_cpu_mode

        enable_cpu_mode()
    if not dist.is_initialized():
        ckpt.prepare_checkpoint_writer()
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if "RANK" in os.environ:  # torchrun / srun: rendezvous from the environment
            dist.init_process_group(backend)
        else:  # one plain process; no environment changes, so child processes do not inherit a port
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    if cuda:
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        from synpro_megatron.pretrain.cpu_compat import cpu_model_parallel_seed

        cpu_model_parallel_seed(seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    if not torch.cuda.is_available():  # leave the process as init_distributed found it
        from synpro_megatron.pretrain.cpu_compat import disable_cpu_mode

        disable_cpu_mode()


# ----------------------------------------------------------------- model + optimizer

def build_model_and_optimizer(cfg: PretrainConfig, vocab_size: int):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer.module import Float16Module

    from synpro_megatron.pretrain.model import build_gpt_model

    gpt, config = build_gpt_model(cfg.model_config(), vocab_size, cfg.tp, cfg.pp, dropout=cfg.dropout, bf16=cfg.bf16)
    module = Float16Module(config, gpt) if cfg.bf16 else gpt
    ddp = DistributedDataParallel(
        config, DistributedDataParallelConfig(grad_reduce_in_fp32=cfg.bf16, use_distributed_optimizer=False), module
    )
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
                        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, adam_eps=1e-8,
                        clip_grad=cfg.clip_grad, bf16=cfg.bf16, params_dtype=torch.float32),
        [ddp],
    )
    gbs = cfg.global_batch
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=cfg.lr, min_lr=cfg.min_lr,
        lr_warmup_steps=min(cfg.lr_warmup_steps, max(cfg.max_steps - 1, 0)) * gbs, lr_decay_steps=max(cfg.max_steps, 1) * gbs,
        lr_decay_style=cfg.lr_decay_style, start_wd=cfg.weight_decay, end_wd=cfg.weight_decay,
        wd_incr_steps=max(cfg.max_steps, 1) * gbs, wd_incr_style="constant",
    )
    config.no_sync_func = ddp.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = opt.scale_loss
    return gpt, ddp, opt, sched, config


# ----------------------------------------------------------------- one forward/backward

def _forward_step_func(needs_data: bool):
    def forward_step(data_iterator, model):
        batch = next(data_iterator) if needs_data else None
        tokens = batch["tokens"] if batch is not None else None
        position_ids = batch["position_ids"] if batch is not None else None
        labels = batch["labels"] if batch is not None else None
        if torch.cuda.is_available() and batch is not None:
            tokens, position_ids, labels = (t.cuda(non_blocking=True) for t in (tokens, position_ids, labels))
        output = model(tokens, position_ids, None, labels=labels)

        def loss_func(per_token_loss):
            mask = batch["loss_mask"].to(per_token_loss.device).view(-1).float()
            total = (per_token_loss.view(-1).float() * mask).sum()
            n_tok = mask.sum().to(torch.int)
            return total, n_tok, {"lm loss": torch.stack([total.detach(), mask.sum()])}

        return output, loss_func

    return forward_step


def run_microbatches(ddp, batches, num_microbatches: int, seq_length: int, micro_batch: int,
                     forward_only: bool, needs_data: bool):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=_forward_step_func(needs_data),
        data_iterator=batches,
        model=ddp,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch,
        forward_only=forward_only,
    )


def global_token_mean(losses_reduced: List[Dict]) -> float:
    """Token-weighted mean over micro-batches and DP ranks, on every rank (last stage holds losses)."""
    from megatron.core import parallel_state as ps

    t = torch.zeros(2, dtype=torch.float64, device="cuda" if torch.cuda.is_available() else "cpu")
    if ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0:
        for d in losses_reduced:
            t += d["lm loss"].to(t)
    dist.all_reduce(t)
    return (t[0] / t[1]).item() if t[1] > 0 else float("nan")


# ----------------------------------------------------------------- the loop

class _StopFlag:
    """SIGTERM/SIGUSR1 (Slurm preemption) -> finish the step, checkpoint, exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass

    def _handler(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        t = torch.tensor([1.0 if self.requested else 0.0], device="cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def evaluate(ddp, eval_batches, cfg: PretrainConfig, seq: int, needs_data: bool) -> float:
    ddp.eval()
    with torch.no_grad():
        losses = run_microbatches(ddp, iter(eval_batches), len(eval_batches), seq, cfg.micro_batch, True, needs_data)
    ddp.train()
    return global_token_mean(losses)


def _eval_sets(cfg: PretrainConfig, tokenizer, seq: int, needs_data: bool):
    from megatron.core import parallel_state as ps

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = cfg.eval_iters * cfg.micro_batch
    sets = {}
    if not needs_data:
        return {"heldout": [None] * cfg.eval_iters, "reference": [None] * cfg.eval_iters}
    held = pdata.heldout_windows(cfg.data, seq, per_rank * dp)
    ref = pdata.reference_windows(cfg.reference, cfg.reference_field, tokenizer, seq, cfg.reference_max_docs,
                                  per_rank * dp, seed=cfg.seed)
    for name, windows in (("heldout", held), ("reference", ref)):
        if len(windows) < per_rank * dp:
            raise ValueError(f"{name} set has {len(windows)} windows of {seq} tokens; need {per_rank * dp} "
                             f"(eval_iters*micro_batch*dp): lower --eval-iters")
        mine = windows[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        sets[name] = pdata.batched(mine, cfg.micro_batch)
    return sets


def pretrain(cfg: PretrainConfig) -> dict:
    """Train (or resume) until cfg.max_steps or cfg.stop_at_sample. Returns a summary dict."""
    from megatron.core import parallel_state as ps

    from synpro_megatron.data.prepare import load_meta
    from synpro_megatron.data.tokenizer import load_tokenizer

    meta = load_meta(cfg.data)
    init_distributed(cfg.tp, cfg.pp, cfg.seed)
    world = dist.get_world_size()
    cfg.validate(world)
    rank = dist.get_rank()
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    num_microbatches = cfg.global_batch // (cfg.micro_batch * dp)
    mc = cfg.model_config()
    seq = mc.seq_length
    needs_data = ps.is_pipeline_first_stage() or ps.is_pipeline_last_stage()
    tokenizer = load_tokenizer(cfg.tokenizer or meta.get("tokenizer"))

    gpt, ddp, opt, sched, _ = build_model_and_optimizer(cfg, tokenizer.vocab_size)

    step, consumed = 0, 0
    resume_from = ckpt.resume_checkpoint(cfg.run_dir, cfg.resume_from) if cfg.resume else None
    if resume_from:
        extra = ckpt.load_checkpoint(resume_from, gpt, opt, sched)
        step, consumed = int(extra["step"]), int(extra["consumed_samples"])

    if rank == 0:  # after the resume load: a run that cannot start leaves the earlier config as it was
        os.makedirs(cfg.run_dir, exist_ok=True)
        atomic_write_text(RunDir(cfg.run_dir).pretrain_config, cfg.to_json())
    dist.barrier()

    total_samples = cfg.max_steps * cfg.global_batch
    stop_sample = min(total_samples, cfg.stop_at_sample or total_samples)
    metrics = MetricsWriter(cfg.run_dir, enabled=(rank == 0), truncate_after_step=step if cfg.resume else 0)
    train_ds = pdata.build_train_dataset(cfg, tokenizer, total_samples, needs_data)
    eval_sets = _eval_sets(cfg, tokenizer, seq, needs_data)
    stop = _StopFlag()
    summary = {"start_step": step, "resumed_from": resume_from}

    if step == 0 and cfg.eval_interval > 0:
        _log_eval(metrics, ddp, eval_sets, cfg, seq, needs_data, step, consumed)

    valuation = None
    if cfg.value_documents:  # data valuation inside the step (influence/valuation.py)
        from synpro_megatron.influence.valuation import attach_valuation

        valuation = attach_valuation(cfg, gpt, train_ds, step, num_microbatches, eval_sets["reference"])
    stream = None
    if needs_data and consumed < stop_sample:
        stream = (valuation or pdata).micro_batches(train_ds, total_samples, consumed, cfg.micro_batch, dp_rank, dp)
    progress = _progress(rank, step, cfg.max_steps)
    while consumed < stop_sample:
        t0 = time.time()
        batches = stream if needs_data else iter([None] * num_microbatches)
        ddp.zero_grad_buffer()
        opt.zero_grad()
        losses = run_microbatches(ddp, batches, num_microbatches, seq, cfg.micro_batch, False, needs_data)
        ok, grad_norm, _ = opt.step()
        if valuation is not None:
            valuation.end_step(step + 1, opt.param_groups[0]["lr"])
        sched.step(increment=cfg.global_batch)
        step += 1
        consumed += cfg.global_batch
        loss = global_token_mean(losses)
        dt = time.time() - t0
        if step % cfg.log_interval == 0:
            metrics.log({"kind": "train", "step": step, "consumed_samples": consumed,
                         "tokens": consumed * seq, "lm_loss": loss, "lr": opt.param_groups[0]["lr"],
                         "grad_norm": float(grad_norm) if grad_norm is not None else None,
                         "tokens_per_s": cfg.global_batch * seq / dt, "step_time_s": dt})
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss:.3f}")
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}")
        if cfg.eval_interval > 0 and step % cfg.eval_interval == 0:
            _log_eval(metrics, ddp, eval_sets, cfg, seq, needs_data, step, consumed)
            if valuation is not None:
                valuation.refresh(eval_sets["reference"])
        preempted = stop.agreed()
        last = consumed >= stop_sample
        if preempted or last or (cfg.save_interval > 0 and step % cfg.save_interval == 0):
            if valuation is not None:
                valuation.flush()  # scores up to this checkpoint's step are on disk before it is
            ckpt.save_checkpoint(cfg.run_dir, step, gpt, opt, sched,
                                 {"step": step, "consumed_samples": consumed, "tokens": consumed * seq})
        if preempted:
            summary["preempted"] = True
            break
    if progress is not None:
        progress.close()
    if valuation is not None:
        valuation.close()
    metrics.close()
    summary.update(step=step, consumed_samples=consumed, tokens=consumed * seq,
                   checkpoint=ckpt.latest_checkpoint(cfg.run_dir))
    return summary


def _log_eval(metrics, ddp, eval_sets, cfg, seq, needs_data, step, consumed):
    held = evaluate(ddp, eval_sets["heldout"], cfg, seq, needs_data)
    ref = evaluate(ddp, eval_sets["reference"], cfg, seq, needs_data)
    metrics.log({"kind": "eval", "step": step, "consumed_samples": consumed, "tokens": consumed * seq,
                 "heldout_loss": held, "reference_loss": ref})


def _progress(rank: int, step: int, total: int):
    if rank != 0:
        return None
    from synpro_megatron.progress import progress

    return progress(total=total, initial=step, desc="pretrain", unit="step", file=sys.stderr)
