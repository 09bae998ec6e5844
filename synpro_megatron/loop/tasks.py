"""Stage functions for NeMo-Run (`run.Partial` targets): plain arguments, one stage each.

The recipes in `synpro_megatron.recipes` wrap these. They share the run-directory layout and
the output checks with the controller (`synpro run`), so a pipeline of Slurm jobs and the
controller can work on the same run directory. Heavy imports stay inside the functions: the
recipe factories import this module and must stay cheap.

`payload="fake"` swaps the real work for the smoke payload `synpro_megatron.loop.smoke` (same
files, no training): it exercises the Slurm/NeMo-Run plumbing in seconds.

`num_nodes`/`num_gpus_per_node` on the single-process stages (probe, generator RL, synthesis)
are the resources their job is sized for (NeMo's recipe convention; `synpro_pipeline` builds the
executor from them); the stage itself uses the devices it can see.
"""

import os
from typing import Dict, List, Optional, Sequence

from synpro_megatron.fsutil import dir_has_files, read_json
from synpro_megatron.rundir import RunDir, source_name

PAYLOADS = ("real", "fake")


def _runner(payload: str):
    if payload not in PAYLOADS:
        raise ValueError(f"payload must be one of {PAYLOADS}, got {payload!r}")
    if payload == "fake":
        from .smoke import SmokeRunner

        return SmokeRunner()
    from .runner import CliRunner

    return CliRunner()


def _require(paths: Sequence[str], what: str) -> None:
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{what}: missing {', '.join(missing)}")


def _not_rank0() -> bool:
    """Single-process stages launched with several ranks (e.g. a torchrun executor) run on
    global rank 0 only; the other ranks return at once."""
    return os.environ.get("RANK", "0") != "0"


def _checkpoint(layout: RunDir, checkpoint: Optional[str]) -> str:
    ckpt = checkpoint or layout.latest_checkpoint()
    if ckpt is None:
        raise FileNotFoundError(f"{layout.checkpoints}: no checkpoint yet (no 'latest'); pass checkpoint=")
    return ckpt


def pretrain_task(run_dir: str, data: Optional[str] = None, model: str = "tiny", tp: int = 1, pp: int = 1,
                  num_nodes: int = 1, num_gpus_per_node: int = 1, micro_batch: int = 2, global_batch: int = 8,
                  seq_length: Optional[int] = None, max_steps: int = 100, lr: float = 6e-4,
                  eval_interval: int = 20, save_interval: int = 50, resume: bool = True,
                  blend_schedule: Optional[str] = None, synthetic: Optional[Dict[str, str]] = None,
                  stop_at_sample: Optional[int] = None, tokenizer: Optional[str] = None, seed: int = 1234,
                  payload: str = "real") -> dict:
    """Pretrain (or resume) in every torchrun rank until max_steps or stop_at_sample.

    `num_nodes` x `num_gpus_per_node` is the world size the recipe was built for; a launch with a
    different one is an error (it would silently change the data-parallel size).
    `resume=True` resumes when run_dir has a checkpoint and starts fresh otherwise.
    """
    from synpro_megatron.pretrain.config import PretrainConfig

    layout = RunDir(run_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "WORLD_SIZE" in os.environ and world != num_nodes * num_gpus_per_node:
        raise ValueError(f"pretrain_task: launched with WORLD_SIZE={world}, but the recipe asks for num_nodes*"
                         f"num_gpus_per_node = {num_nodes}*{num_gpus_per_node}; fix the executor or the recipe")
    cfg = PretrainConfig(
        run_dir=run_dir, data=data or layout.organic_prefix, model=model, seq_length=seq_length, tokenizer=tokenizer,
        tp=tp, pp=pp, micro_batch=micro_batch, global_batch=global_batch, max_steps=max_steps, lr=lr, seed=seed,
        eval_interval=eval_interval, save_interval=save_interval,
        resume=bool(resume and layout.latest_step() is not None), blend_schedule=blend_schedule,
        synthetic=dict(synthetic or {}), stop_at_sample=stop_at_sample)
    if payload == "fake":
        from .smoke import fake_pretrain
        import dataclasses

        if os.environ.get("RANK", "0") == "0":  # the fake trainer is one process; other ranks idle
            fake_pretrain(dataclasses.asdict(cfg))
        return {"step": layout.latest_step(), "checkpoint": layout.latest_checkpoint()}
    if payload != "real":
        raise ValueError(f"payload must be one of {PAYLOADS}, got {payload!r}")
    from synpro_megatron.pretrain.trainer import destroy_distributed, pretrain

    try:
        summary = pretrain(cfg)
    finally:
        destroy_distributed()
    if summary.get("preempted"):
        # checkpointed on SIGTERM/SIGUSR1: a non-zero exit makes NeMo-Run's sbatch script requeue
        raise SystemExit(143)
    return summary


def probe_task(run_dir: str, round: int = 1, num_nodes: int = 1, num_gpus_per_node: int = 1,
               checkpoint: Optional[str] = None, args: Optional[List[str]] = None,
               payload: str = "real") -> dict:
    """Reference-set projected gradients at `checkpoint` (default: the newest) for round `round`."""
    if _not_rank0():
        return {"probe": None, "rank": int(os.environ["RANK"])}
    layout = RunDir(run_dir)
    ckpt = _checkpoint(layout, checkpoint)
    _runner(payload).probe(run_dir, round, ckpt, args or [])
    if not dir_has_files(layout.probe_dir(round)):
        raise FileNotFoundError(f"probe wrote nothing under {layout.probe_dir(round)}")
    return {"probe": layout.probe_dir(round), "checkpoint": ckpt}


def _reward_model_args(stage: str, judge_model: Optional[str], quality_model: Optional[str], verifier: str,
                       verifier_rejects: bool) -> List[str]:
    """The reward models a recipe names, as the flags the loop config gives the same commands."""
    from .config import GeneratorConfig

    return GeneratorConfig(judge_model=judge_model, quality_model=quality_model, verifier=verifier,
                           verifier_rejects=verifier_rejects).reward_model_args(stage)


def generator_rl_task(run_dir: str, kind: str = "rephrase", round: int = 1, num_nodes: int = 1,
                      num_gpus_per_node: int = 1, checkpoint: Optional[str] = None,
                      args: Optional[List[str]] = None, payload: str = "real", judge_model: Optional[str] = None,
                      quality_model: Optional[str] = None, verifier: str = "auto",
                      verifier_rejects: bool = False) -> dict:
    """GRPO-train the `kind` generator against `checkpoint` (default: the newest). `judge_model` (an
    LLM faithfulness judge), `quality_model`, `verifier` and `verifier_rejects` choose the reward
    models as `synpro train-generator --judge-model ...` does."""
    if _not_rank0():
        return {"generator": None, "rank": int(os.environ["RANK"])}
    layout = RunDir(run_dir)
    ckpt = _checkpoint(layout, checkpoint)
    flags = _reward_model_args("train", judge_model, quality_model, verifier, verifier_rejects)
    _runner(payload).train_generator(kind, run_dir, round, ckpt, flags + list(args or []))
    out = layout.generator_dir(round, kind)
    if not dir_has_files(out):
        raise FileNotFoundError(f"train-generator wrote no generator under {out}")
    return {"generator": out}


def synthesis_task(run_dir: str, kind: str = "rephrase", round: int = 1, num_nodes: int = 1,
                   num_gpus_per_node: int = 1, generator: Optional[str] = None,
                   args: Optional[List[str]] = None, payload: str = "real", judge_model: Optional[str] = None,
                   verifier: str = "auto", verifier_rejects: bool = False) -> dict:
    """Write round `round` of `kind` synthetic data with the trained generator; `judge_model`,
    `verifier` and `verifier_rejects` choose the faithfulness gate as `synpro synthesize` flags do."""
    if _not_rank0():
        return {"prefix": None, "rank": int(os.environ["RANK"])}
    layout = RunDir(run_dir)
    flags = _reward_model_args("synth", judge_model, None, verifier, verifier_rejects)
    _runner(payload).synthesize(kind, run_dir, round, generator or layout.generator_dir(round, kind),
                                flags + list(args or []))
    prefix = layout.synthetic_prefix(round, kind)
    _require([prefix + ".bin", prefix + ".idx"], "synthesize")
    return {"prefix": prefix}


def blend_task(run_dir: str, round: int = 1, kinds: Optional[List[str]] = None, start_sample: Optional[int] = None,
               organic: float = 0.5, new_round: Optional[Dict[str, float]] = None,
               earlier_rounds: float = 0.1, max_epochs: Optional[float] = 4.0) -> dict:
    """Extend the blend schedule with round `round` from `start_sample` (default: the samples
    consumed at the newest checkpoint): `loop.blend.extend_blend`, as `synpro run` does it. The
    budget the epoch caps divide comes from the run's pretrain_config.json (the trainer writes it)."""
    if _not_rank0():
        return {"blend_schedule": None, "rank": int(os.environ["RANK"])}
    from synpro_megatron.pretrain.config import PretrainConfig

    from .blend import extend_blend
    from .config import BlendWeights

    layout = RunDir(run_dir)
    kinds = list(kinds or ["rephrase", "reformat"])
    weights = BlendWeights(organic=organic, new_round=dict(new_round or {k: 0.25 for k in kinds}),
                           earlier_rounds=earlier_rounds, max_epochs=max_epochs)
    if start_sample is None:
        ckpt = _checkpoint(layout, None)
        state_file = os.path.join(ckpt, "synpro_state.json")
        _require([state_file], "blend_task needs the checkpoint's consumed_samples")
        start_sample = int(read_json(state_file)["consumed_samples"])
    _require([layout.pretrain_config], "blend_task needs the pretraining budget")
    pcfg = PretrainConfig.from_dict(read_json(layout.pretrain_config))
    ext = extend_blend(run_dir, round, kinds, start_sample, weights, pcfg.model_config().seq_length,
                       pcfg.max_steps * pcfg.global_batch)
    return {"blend_schedule": ext.path, "start_sample": start_sample, "epoch_caps": ext.caps,
            "empty": ext.empty, "synthetic": ext.synthetic}


def synthetic_sources(run_dir: str, rounds: int, kinds: Sequence[str]) -> Dict[str, str]:
    """Blend source name -> dataset prefix for rounds 1..`rounds` (what pretrain needs)."""
    layout = RunDir(run_dir)
    return {source_name(k, kind): layout.synthetic_prefix(k, kind) for k in range(1, rounds + 1) for kind in kinds}


def loop_task(config: str, run_dir: str, payload: str = "real", max_stages: Optional[int] = None) -> dict:
    """The whole loop (`synpro run`) as one task."""
    if _not_rank0():
        return {"stage": None, "rank": int(os.environ["RANK"])}
    from .config import LoopConfig
    from .controller import Controller

    runner = _runner(payload) if payload == "fake" else None
    state = Controller(LoopConfig.load(config), run_dir, runner=runner).run(max_stages=max_stages)
    return state.to_dict()
