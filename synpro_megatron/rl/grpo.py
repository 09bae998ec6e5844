"""GRPO training of a generator with TRL's GRPOTrainer and the SynPro rewards.

Settings follow the method (research/synpro.md section 3): group size 8 on GPU (4 on CPU), KL beta
0.005, learning rate 1e-6 with a cosine decay to 10 % after 10 % warmup, token-level loss (TRL's
"dapo": normalised by the active tokens of the whole accumulated batch), temperature 1.0, top-p
0.9, seed 42. On a CUDA machine with vLLM installed, rollouts run in vLLM colocated with the
trainer (TRL syncs the weights into it every step).

Output: the trained generator as a Hugging Face folder (written under a temporary name, then
renamed) with reward_log.jsonl (one line per optimizer step: the mean of every raw reward, the
combined reward and the gate pass rate) and synpro_generator.json (how it was trained, including
the sampling settings that synthesis reuses). TensorBoard scalars - ours (reward/...) and TRL's
own (train/loss, kl, entropy, clip ratios) - go to RUN_DIR/tensorboard/grpo-...

Preemption: the trainer state (weights, optimizer, scheduler, RNG, step) is checkpointed every
`save_steps` steps into the work folder beside the output; `resume=True` continues from the
newest checkpoint with the same step count, data order and reward log (lines written after that
checkpoint are dropped: those steps run again). Without `resume` an earlier work folder is
discarded. Several GPUs: `synpro train-generator --gpus N` relaunches itself under accelerate
(rl/launch.py) with DeepSpeed ZeRO-2 or FSDP, each rank with its own colocated vLLM engine.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from synpro_megatron.fsutil import atomic_write_text
from synpro_megatron.generators.backends import SamplingConfig
from synpro_megatron.generators.prompts import check_kind, render_messages
from synpro_megatron.rewards.combine import CombinedReward, RewardWeights
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig
from synpro_megatron.rewards.quality import QualityConfig
from synpro_megatron.rundir import RunDir

REWARD_LOG = "reward_log.jsonl"
REWARD_LOG_KEYS = ("faithfulness", "gate_pass_rate", "quality", "format", "influence", "combined")
DEFAULT_SAVE_STEPS = 50  # the paper saves every 30-60 steps of its 120-300
RUN_CONFIG = "grpo_run.json"  # in the work folder: what a --resume must agree with
# settings a resumed run must share with the interrupted one (others, e.g. steps, may change)
RESUME_MUST_MATCH = ("kind", "generator", "source_jsonl", "organic", "num_prompts", "num_generations", "prompts_per_device",
                     "gradient_accumulation_steps", "seed", "max_completion_length", "max_source_tokens",
                     "few_shot", "influence")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class GRPORunConfig:
    kind: str
    run_dir: str
    round: int = 1  # the generator's home: RUN_DIR/rounds/round_K/generators/KIND (synpro_megatron.rundir)
    output_dir: Optional[str] = None  # explicit output folder instead of that home
    generator: Optional[str] = None  # start policy; None = offline SmolLM2
    checkpoint: Optional[str] = None  # pretraining checkpoint for the influence reward
    reference_jsonl: Optional[str] = None  # reference set for the influence probe (default: packaged)
    source_jsonl: Optional[str] = None  # documents to rewrite (default: the run's organic pool, held-out excluded)
    organic: Optional[str] = None  # prepared organic prefix (default RUN_DIR/data/organic)
    influence: bool = True
    num_prompts: int = 64
    steps: int = 240
    num_generations: Optional[int] = None  # group size: 8 on GPU, 4 on CPU
    prompts_per_device: Optional[int] = None  # prompts per micro-step and device: 1 GPU, 2 CPU
    gradient_accumulation_steps: Optional[int] = None  # 4 GPU, 1 CPU
    learning_rate: float = 1e-6
    min_lr_rate: float = 0.1
    warmup_ratio: float = 0.1
    beta: float = 0.005
    loss_type: str = "dapo"
    max_completion_length: Optional[int] = None  # 2048 GPU, 48 CPU
    max_source_tokens: Optional[int] = None  # longest source used as a prompt: 1536 GPU, 160 CPU
    min_source_chars: int = 200
    few_shot: bool = False  # prompts start with the worked example (small generators); saved with the generator
    mask_truncated_completions: bool = False
    # rollouts sample as synthesis will (one SamplingConfig; synthesis reads it from the generator)
    temperature: float = SamplingConfig.temperature
    top_p: float = SamplingConfig.top_p
    repetition_penalty: float = SamplingConfig.repetition_penalty
    seed: int = 42
    save_steps: int = DEFAULT_SAVE_STEPS  # checkpoint the trainer every N optimizer steps
    resume: bool = False  # continue from the newest checkpoint of an interrupted run
    use_vllm: Optional[bool] = None  # None: when CUDA and vLLM are available
    vllm_gpu_memory_utilization: float = 0.3
    gradient_checkpointing: Optional[bool] = None  # on GPU by default
    weights: RewardWeights = field(default_factory=RewardWeights)
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_p, self.repetition_penalty)

    def resolved(self) -> "GRPORunConfig":
        """Fill the device-dependent defaults (GPU: the paper's; CPU: small enough to run)."""
        check_kind(self.kind)
        gpu = on_gpu()
        import importlib.util

        def pick(value, gpu_value, cpu_value):
            return value if value is not None else (gpu_value if gpu else cpu_value)

        return dataclasses.replace(
            self,
            num_generations=pick(self.num_generations, 8, 4),
            prompts_per_device=pick(self.prompts_per_device, 1, 2),
            gradient_accumulation_steps=pick(self.gradient_accumulation_steps, 4, 1),
            max_completion_length=pick(self.max_completion_length, 2048, 48),
            max_source_tokens=pick(self.max_source_tokens, 1536, 160),
            use_vllm=pick(self.use_vllm, importlib.util.find_spec("vllm") is not None, False),
            gradient_checkpointing=pick(self.gradient_checkpointing, True, False),
        )


def generator_output_dir(cfg: GRPORunConfig) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    return Path(RunDir(cfg.run_dir).generator_dir(cfg.round, cfg.kind))


# ------------------------------------------------------------------------------- data

def build_prompt_dataset(cfg: GRPORunConfig, tokenizer):
    """`num_prompts` sources (seeded choice) as a TRL conversational dataset with the `source` and
    `doc_id` columns the reward reads. A source is a document of at most `max_source_tokens`
    tokens, or the first piece of a longer one (cut where synthesis would cut it), so that a
    completion of `max_completion_length` tokens can be a whole rewrite; pieces under
    `min_source_chars` characters are too short to rewrite."""
    from datasets import Dataset

    from synpro_megatron.generators.chunking import chunk_source
    from synpro_megatron.synthesis.sources import load_pool, organic_pool

    pool = organic_pool(cfg.run_dir, cfg.organic, cfg.source_jsonl)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    usable = []
    for d in load_pool(pool):
        # only the first piece is used: packing is greedy from the start, so a prefix far longer
        # than any piece (no token is 12 characters on average) gives the same first piece, cheaply
        pieces = chunk_source(d.text[: cfg.max_source_tokens * 12], count, cfg.max_source_tokens)
        if pieces and len(pieces[0]) >= cfg.min_source_chars:
            usable.append((d.doc_id, pieces[0]))
    if len(usable) < cfg.num_prompts:
        raise ValueError(f"{pool.path}: only {len(usable)} documents give a source of >= {cfg.min_source_chars} "
                         f"characters within {cfg.max_source_tokens} tokens; {cfg.num_prompts} prompts were asked for")
    chosen = random.Random(cfg.seed).sample(usable, cfg.num_prompts)
    dataset = Dataset.from_list([{"prompt": render_messages(cfg.kind, text, few_shot=cfg.few_shot), "source": text,
                                  "doc_id": doc_id} for doc_id, text in chosen])
    dataset.info.description = f"{pool.origin}:{pool.path}"
    return dataset


# ------------------------------------------------------------------------------- influence

def check_pretrain_checkpoint(checkpoint: Optional[str]) -> str:
    """The checkpoint folder to load (a checkpoint, its checkpoints/ root or a run dir), or a clear
    error naming the path. Cheap: run before any model is loaded."""
    if not checkpoint:
        raise ValueError("the influence reward needs --checkpoint (the pretraining checkpoint); "
                         "or pass --no-influence")
    from synpro_megatron.pretrain.checkpoint import resolve_checkpoint

    try:
        return resolve_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"bad pretraining checkpoint {checkpoint}: {e}") from e


def build_influence_scorer(checkpoint: Optional[str], reference_jsonl: Optional[str] = None):
    """The production influence scorer: InfluenceProbe at the pretraining checkpoint."""
    path = check_pretrain_checkpoint(checkpoint)
    try:
        from synpro_megatron.influence import InfluenceProbe
    except ImportError:
        try:
            from synpro_megatron.influence.probe import InfluenceProbe
        except ImportError as e:
            raise RuntimeError(f"the influence probe is not available ({e}); pass --no-influence") from e
    try:
        return InfluenceProbe(path, reference_jsonl)
    except Exception as e:  # noqa: BLE001 - a corrupt checkpoint surfaces here; name it
        raise RuntimeError(f"cannot load pretraining checkpoint {path} for the influence reward: "
                           f"{type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------- logging

def _reward_log_callback(reward: CombinedReward, log_path: Path, writer):
    from transformers import TrainerCallback

    class RewardLogCallback(TrainerCallback):
        """Appends one line per optimizer step to the reward log (main process) and mirrors it to
        TensorBoard. The log lives in the work folder, so a checkpoint and the log move together."""

        def on_step_end(self, args, state, control, **kwargs):
            entries = reward.drain_history()
            if not entries or not state.is_world_process_zero:
                return
            line = {"step": state.global_step, "time": round(time.time(), 3)}
            for key in REWARD_LOG_KEYS:
                values = [e[key] for e in entries if e.get(key) is not None]
                line[key] = sum(values) / len(values) if values else None
            line["completions"] = sum(e["completions"] for e in entries)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if writer is not None:
                for key in REWARD_LOG_KEYS:
                    if line[key] is not None:
                        writer.add_scalar(f"reward/{key}", line[key], state.global_step)
                writer.flush()

    return RewardLogCallback()


def _tensorboard(tb_dir: Path, main_process: bool):
    """One SummaryWriter for the run's TensorBoard folder, shared by TRL's TensorBoardCallback
    (train/loss, kl, entropy, clip ratios ...) and our reward scalars; None off the main process."""
    if not main_process:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return None
    tb_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(tb_dir))


# ------------------------------------------------------------------------------- checkpoints

def latest_checkpoint(work: Path) -> Optional[Path]:
    """The newest complete trainer checkpoint (checkpoint-N with its trainer_state.json) in `work`."""
    found = []
    for p in work.glob("checkpoint-*") if work.is_dir() else []:
        tail = p.name.split("-", 1)[1]
        if tail.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(tail), p))
    return max(found)[1] if found else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])


def truncate_reward_log(log_path: Path, last_step: int) -> int:
    """Keep the reward log lines of steps <= last_step (the checkpoint's): later steps run again
    after a resume. Returns the number of lines kept. Written atomically."""
    if not log_path.exists():
        return 0
    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError):  # a line cut by the kill: the step runs again
            pass
    atomic_write_text(str(log_path), "".join(f"{line}\n" for line in kept))
    return len(kept)


def _resumable_trainer_class():
    """GRPOTrainer whose prompt sampler draws each epoch's order from (seed, epoch) alone.

    TRL's RepeatSampler keeps one generator for the whole run, so epoch 2's order depends on
    epoch 1 having been drawn in the same process: a run resumed at or after an epoch boundary
    would see other prompts than the run it continues. The Trainer calls set_epoch(epoch) on
    the sampler before each epoch (also after a resume), which reseeds it; epoch 0's order is
    TRL's own (seed + 0)."""
    from trl import GRPOTrainer
    from trl.trainer.utils import RepeatSampler

    class EpochSeededRepeatSampler(RepeatSampler):
        epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            if self.shuffle and self.seed is not None:
                self.generator.manual_seed(self.seed + self.epoch)
            self.epoch += 1  # an iteration without set_epoch (not the Trainer's way) is the next epoch
            yield from super().__iter__()

    class ResumableGRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            base = super()._get_train_sampler(dataset)
            return EpochSeededRepeatSampler(
                data_source=base.data_source, mini_repeat_count=base.mini_repeat_count, batch_size=base.batch_size,
                repeat_count=base.repeat_count, shuffle=base.shuffle, seed=base.seed)

    return ResumableGRPOTrainer


def _comparable(cfg: "GRPORunConfig") -> dict:
    return {k: v for k, v in asdict(cfg).items() if k in RESUME_MUST_MATCH}


def prepare_work_dir(cfg: "GRPORunConfig", work: Path, main_process: bool = True) -> Optional[Path]:
    """Set up the work folder; returns the checkpoint to resume from (None: start at step 0).

    Without `resume` an earlier work folder is discarded. With it the newest checkpoint is
    continued, provided the run settings agree with the interrupted run's (a clear error names
    the ones that differ); no checkpoint yet means a fresh start in the same folder."""
    saved = work / RUN_CONFIG
    if not cfg.resume:
        if main_process and work.exists():
            print(f"train-generator: discarding the earlier work folder {work} (pass --resume to continue it)",
                  flush=True)
            shutil.rmtree(work)
    elif saved.exists():
        before = json.loads(saved.read_text(encoding="utf-8"))
        differ = {k: (before.get(k), v) for k, v in _comparable(cfg).items() if before.get(k) != v}
        if differ:
            raise ValueError(f"--resume: {saved} was written by a run with other settings: " + ", ".join(
                f"{k} was {a!r}, now {b!r}" for k, (a, b) in differ.items()))
    checkpoint = latest_checkpoint(work) if cfg.resume else None
    if main_process:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(saved), json.dumps(_comparable(cfg), indent=1))
        if checkpoint is not None:
            step = checkpoint_step(checkpoint)
            kept = truncate_reward_log(work / REWARD_LOG, step)
            print(f"train-generator: resuming from {checkpoint} at step {step} ({kept} reward-log lines kept)",
                  flush=True)
        elif cfg.resume:
            truncate_reward_log(work / REWARD_LOG, 0)
            print(f"train-generator: --resume found no checkpoint in {work}; starting at step 0", flush=True)
    return checkpoint


# ------------------------------------------------------------------------------- training

def make_grpo_config(cfg: GRPORunConfig, work_dir: Path):
    from trl import GRPOConfig

    gpu = on_gpu()
    per_device = cfg.prompts_per_device * cfg.num_generations  # whole groups per device and micro-step
    kwargs = dict(
        output_dir=str(work_dir), max_steps=cfg.steps, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_rate},
        warmup_steps=cfg.warmup_ratio, beta=cfg.beta, loss_type=cfg.loss_type, temperature=cfg.temperature,
        top_p=cfg.top_p, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=2,  # the newest two: one may be half-written when the job is killed
        # TensorBoard goes through our own TensorBoardCallback into the run's folder (train_generator)
        report_to=[], mask_truncated_completions=cfg.mask_truncated_completions,
        bf16=gpu, use_cpu=not gpu,
        disable_tqdm=False,
    )
    # Always explicit: TRL turns checkpointing on by default, which on CPU only costs time.
    # (transformers 5 renamed the option; both names exist in 5.24.)
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    kwargs["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = \
        bool(cfg.gradient_checkpointing)
    if cfg.use_vllm:
        if not gpu:
            raise ValueError("use_vllm needs a CUDA device (TRL's colocated vLLM); use the transformers path on CPU")
        kwargs.update(use_vllm=True, vllm_mode="colocate",
                      vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                      vllm_max_model_length=None)
    return GRPOConfig(**kwargs)


def _save_atomically(trainer, tokenizer, final: Path, extra_files: dict[str, Path], meta: dict) -> Path:
    """Every rank takes part in trainer.save_model (ZeRO-3/FSDP gather the weights there); the main
    process then adds our files and renames the finished folder into place."""
    acc = trainer.accelerator
    tmp = final.parent / f".{final.name}.tmp"
    if acc.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    acc.wait_for_everyone()
    trainer.save_model(str(tmp))
    if acc.is_main_process:
        tokenizer.save_pretrained(str(tmp))
        for name, src in extra_files.items():
            if src.exists():
                shutil.copy2(src, tmp / name)
        for leftover in ("training_args.bin",):
            if (tmp / leftover).exists():
                (tmp / leftover).unlink()
        (tmp / "synpro_generator.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def train_generator(cfg: GRPORunConfig, influence_scorer=None) -> Path:
    """GRPO-train the `cfg.kind` generator; returns the saved folder.

    `influence_scorer`: any object with `.score(texts)`; when None and cfg.influence, the
    InfluenceProbe at cfg.checkpoint is built.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cfg = cfg.resolved()
    if cfg.checkpoint is None:  # the influence reward scores against the run's newest checkpoint
        cfg = dataclasses.replace(cfg, checkpoint=RunDir(cfg.run_dir).latest_checkpoint())
    from transformers import AutoModelForCausalLM

    from synpro_megatron.generators.backends import GeneratorLoadError, load_generator_tokenizer, resolve_generator_path

    if cfg.influence and influence_scorer is None:
        check_pretrain_checkpoint(cfg.checkpoint)  # fail before anything slow
    generator = resolve_generator_path(cfg.generator)
    tokenizer = load_generator_tokenizer(generator)
    dataset = build_prompt_dataset(cfg, tokenizer)
    if cfg.influence and influence_scorer is None:
        influence_scorer = build_influence_scorer(cfg.checkpoint, cfg.reference_jsonl)
    reward = CombinedReward(cfg.kind, influence=influence_scorer if cfg.influence else None, weights=cfg.weights,
                            faithfulness_config=cfg.faithfulness, quality_config=cfg.quality)

    from accelerate import PartialState

    main_process = PartialState().is_main_process
    if cfg.save_steps < 1:
        raise ValueError(f"save_steps must be >= 1, got {cfg.save_steps}")
    final = generator_output_dir(cfg)
    work = final.parent / f".{final.name}.work"
    resume_from = prepare_work_dir(cfg, work, main_process)
    PartialState().wait_for_everyone()
    log_path = work / REWARD_LOG
    tb_dir = Path(RunDir(cfg.run_dir).tensorboard(f"grpo-round_{cfg.round}-{cfg.kind}"))
    import torch

    try:
        model = AutoModelForCausalLM.from_pretrained(
            generator, dtype=torch.bfloat16 if on_gpu() else torch.float32, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise GeneratorLoadError(f"cannot load generator weights from {generator}: {e}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    from transformers.integrations import TensorBoardCallback

    writer = _tensorboard(tb_dir, main_process)
    callbacks = [_reward_log_callback(reward, log_path, writer)]
    if writer is not None:
        callbacks.append(TensorBoardCallback(tb_writer=writer))
    trainer = _resumable_trainer_class()(model=model, reward_funcs=[reward], args=make_grpo_config(cfg, work),
                          train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    started = time.time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if writer is not None:
        writer.close()
    meta = {"kind": cfg.kind, "base_generator": generator, "checkpoint": cfg.checkpoint, "steps": cfg.steps,
            "resumed_from": str(resume_from) if resume_from else None, "sampling": asdict(cfg.sampling),
            "influence": bool(cfg.influence), "seconds": round(time.time() - started, 1),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("faithfulness", "quality")},
            "align_threshold": cfg.faithfulness.align_threshold,
            # what the prompts were made of: the run's organic pool unless told otherwise
            "prompt_sources": dataset.info.description, "prompt_doc_ids": list(dataset["doc_id"])}
    _save_atomically(trainer, tokenizer, final, {REWARD_LOG: log_path}, meta)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work, ignore_errors=True)
    return final


def read_reward_log(generator_dir: str) -> list[dict]:
    path = Path(generator_dir) / REWARD_LOG
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

