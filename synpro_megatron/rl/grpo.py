"""GRPO training of a generator with TRL's GRPOTrainer and the SynPro rewards.

Settings follow the method (research/synpro.md section 3): group size 8 on GPU (4 on CPU), KL beta
0.005, learning rate 1e-6 with a cosine decay to 10 % after 10 % warmup, token-level loss (TRL's
"dapo": normalised by the active tokens of the whole accumulated batch), temperature 1.0, top-p
0.9, seed 42. On a CUDA machine with vLLM installed, rollouts run in vLLM colocated with the
trainer (TRL syncs the weights into it every step).

Output: the trained generator as a Hugging Face folder (written under a temporary name, then
renamed) with reward_log.jsonl (one line per optimizer step: the mean of every raw reward, the
combined reward and the gate pass rate) and synpro_generator.json (how it was trained).
TensorBoard scalars go to RUN_DIR/tensorboard/grpo-...
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

from synpro_megatron.generators.prompts import check_kind, render_messages
from synpro_megatron.rewards.combine import CombinedReward, RewardWeights
from synpro_megatron.rewards.faithfulness import FaithfulnessConfig
from synpro_megatron.rewards.quality import QualityConfig

REWARD_LOG = "reward_log.jsonl"
REWARD_LOG_KEYS = ("faithfulness", "gate_pass_rate", "quality", "format", "influence", "combined")


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class GRPORunConfig:
    kind: str
    run_dir: str
    round: Optional[int] = None  # None: output at RUN_DIR/generators/KIND (the loop passes a round dir)
    output_dir: Optional[str] = None  # explicit output folder (overrides the two layouts above)
    generator: Optional[str] = None  # start policy; None = offline SmolLM2
    checkpoint: Optional[str] = None  # pretraining checkpoint for the influence reward
    reference_jsonl: Optional[str] = None  # reference set for the influence probe (default: packaged)
    source_jsonl: Optional[str] = None  # organic documents to rewrite (default: prepared corpus / sample)
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
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 42
    use_vllm: Optional[bool] = None  # None: when CUDA and vLLM are available
    vllm_gpu_memory_utilization: float = 0.3
    gradient_checkpointing: Optional[bool] = None  # on GPU by default
    weights: RewardWeights = field(default_factory=RewardWeights)
    faithfulness: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)

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
    if cfg.round is None:
        return Path(cfg.run_dir) / "generators" / cfg.kind
    return Path(cfg.run_dir) / "generators" / f"round_{cfg.round}" / cfg.kind


# ------------------------------------------------------------------------------- data

def build_prompt_dataset(cfg: GRPORunConfig, tokenizer):
    """`num_prompts` sources (seeded choice) as a TRL conversational dataset with the `source` and
    `doc_id` columns the reward reads. A source is a document of at most `max_source_tokens`
    tokens, or the first piece of a longer one (cut where synthesis would cut it), so that a
    completion of `max_completion_length` tokens can be a whole rewrite; pieces under
    `min_source_chars` characters are too short to rewrite."""
    from datasets import Dataset

    from synpro_megatron.generators.chunking import chunk_source
    from synpro_megatron.generators.synthesize import default_source, load_sources

    source, only_ids = (cfg.source_jsonl, None) if cfg.source_jsonl else default_source(cfg.run_dir)

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    usable = []
    for d in load_sources(source, only_ids):
        # only the first piece is used: packing is greedy from the start, so a prefix far longer
        # than any piece (no token is 12 characters on average) gives the same first piece, cheaply
        pieces = chunk_source(d.text[: cfg.max_source_tokens * 12], count, cfg.max_source_tokens)
        if pieces and len(pieces[0]) >= cfg.min_source_chars:
            usable.append((d.doc_id, pieces[0]))
    if len(usable) < cfg.num_prompts:
        raise ValueError(f"{source}: only {len(usable)} documents give a source of >= {cfg.min_source_chars} "
                         f"characters within {cfg.max_source_tokens} tokens; {cfg.num_prompts} prompts were asked for")
    chosen = random.Random(cfg.seed).sample(usable, cfg.num_prompts)
    return Dataset.from_list([{"prompt": render_messages(cfg.kind, text, few_shot=cfg.few_shot), "source": text,
                               "doc_id": doc_id} for doc_id, text in chosen])


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

def _reward_log_callback(reward: CombinedReward, log_path: Path, tb_dir: Path):
    from transformers import TrainerCallback

    class RewardLogCallback(TrainerCallback):
        """Appends one line per optimizer step to the reward log and mirrors it to TensorBoard."""

        def __init__(self):
            self.writer = None
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(tb_dir))
            except ImportError:  # pragma: no cover
                pass

        def on_step_end(self, args, state, control, **kwargs):
            entries = reward.drain_history()
            if not entries:
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
            if self.writer is not None:
                for key in REWARD_LOG_KEYS:
                    if line[key] is not None:
                        self.writer.add_scalar(f"reward/{key}", line[key], state.global_step)
                self.writer.flush()

        def on_train_end(self, args, state, control, **kwargs):
            if self.writer is not None:
                self.writer.close()

    return RewardLogCallback()


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
        top_p=cfg.top_p, seed=cfg.seed, data_seed=cfg.seed, logging_steps=1, save_strategy="no",
        report_to=["tensorboard"], mask_truncated_completions=cfg.mask_truncated_completions,
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
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

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

    final = generator_output_dir(cfg)
    work = final.parent / f".{final.name}.work"
    if work.exists():
        shutil.rmtree(work)  # a run interrupted earlier starts over (no mid-run checkpoints are kept)
    work.mkdir(parents=True)
    log_path = work / REWARD_LOG
    tag = f"round_{cfg.round}-{cfg.kind}" if cfg.round is not None else cfg.kind
    tb_dir = Path(cfg.run_dir) / "tensorboard" / f"grpo-{tag}"
    import torch

    try:
        model = AutoModelForCausalLM.from_pretrained(
            generator, dtype=torch.bfloat16 if on_gpu() else torch.float32, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise GeneratorLoadError(f"cannot load generator weights from {generator}: {e}") from e
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=make_grpo_config(cfg, work),
                          train_dataset=dataset, processing_class=tokenizer,
                          callbacks=[_reward_log_callback(reward, log_path, tb_dir)])
    started = time.time()
    trainer.train()
    meta = {"kind": cfg.kind, "base_generator": generator, "checkpoint": cfg.checkpoint, "steps": cfg.steps,
            "influence": bool(cfg.influence), "seconds": round(time.time() - started, 1),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("faithfulness", "quality")},
            "align_threshold": cfg.faithfulness.align_threshold}
    _save_atomically(trainer, tokenizer, final, {REWARD_LOG: log_path}, meta)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work, ignore_errors=True)
    return final


def read_reward_log(generator_dir: str) -> list[dict]:
    path = Path(generator_dir) / REWARD_LOG
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

