"""Model sizes and the pretraining run config.

The 400m and 1b shapes follow the SynPro paper (OLMo-style): 16 layers, SwiGLU MLP with a
gated width of 4x hidden (8x before gating), RoPE, QK-layernorm, RMSNorm, untied embeddings.
`tiny` keeps the same architecture at a size a 2-core CPU trains in seconds.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ModelConfig:
    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    seq_length: int
    rope_base: float = 500_000.0
    norm_epsilon: float = 1e-6

    def num_params(self, vocab_size: int) -> int:
        """Parameters of the GPT model (both embeddings counted: they are untied)."""
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        head_dim = h // self.num_attention_heads
        attn = h * 3 * h + h * h + 2 * head_dim  # qkv + proj + q/k layernorm
        mlp = h * 2 * f + f * h  # SwiGLU: gate+up fused, then down
        norms = 2 * h
        return L * (attn + mlp + norms) + h + 2 * vocab_size * h


MODEL_CONFIGS = {
    "tiny": ModelConfig("tiny", num_layers=4, hidden_size=128, num_attention_heads=4, ffn_hidden_size=512,
                        seq_length=256),
    "400m": ModelConfig("400m", num_layers=16, hidden_size=1024, num_attention_heads=16, ffn_hidden_size=4096,
                        seq_length=2048),
    "1b": ModelConfig("1b", num_layers=16, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=8192,
                      seq_length=2048),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    cfg = MODEL_CONFIGS[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


@dataclass
class PretrainConfig:
    """Everything one `synpro pretrain` run needs. Serialised to run_dir/pretrain_config.json."""

    run_dir: str
    data: str  # prefix of the organic IndexedDataset written by `synpro prepare`
    model: str = "tiny"
    # optional model-shape overrides (tests use them to shrink tiny further)
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    num_attention_heads: Optional[int] = None
    ffn_hidden_size: Optional[int] = None
    seq_length: Optional[int] = None

    tokenizer: Optional[str] = None  # default: read from the prepared dataset's metadata
    tp: int = 1
    pp: int = 1
    micro_batch: int = 2
    global_batch: int = 8
    max_steps: int = 100
    lr: float = 6e-4
    min_lr: float = 6e-5
    lr_warmup_steps: int = 10
    lr_decay_style: str = "cosine"  # cosine | constant
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    seed: int = 1234
    dropout: float = 0.0
    bf16: bool = False  # on GPU; CPU runs stay fp32

    eval_interval: int = 20
    eval_iters: int = 4  # micro-batches of held-out organic text per evaluation
    reference: Optional[str] = None  # JSONL reference set; default: the packaged reference_qa.jsonl
    reference_field: str = "text"
    reference_max_docs: int = 256
    save_interval: int = 50
    resume: bool = False
    resume_from: Optional[int] = None  # with resume: this step's checkpoint instead of the newest
    log_interval: int = 1

    # blending: a BlendSchedule JSON/YAML over "organic" and synthetic sources (see synpro_megatron.blending)
    blend_schedule: Optional[str] = None
    synthetic: dict = field(default_factory=dict)  # source name -> dataset prefix
    stop_at_sample: Optional[int] = None  # stop (and checkpoint) once this many samples are consumed
    value_documents: bool = False  # score every document segment in the step (influence/valuation.py)

    def model_config(self):
        return get_model_config(
            self.model,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            ffn_hidden_size=self.ffn_hidden_size,
            seq_length=self.seq_length,
        )

    def validate(self, world_size: int) -> None:
        model_parallel = self.tp * self.pp
        if world_size % model_parallel:
            raise ValueError(f"world size {world_size} is not divisible by tp*pp = {self.tp}*{self.pp}")
        dp = world_size // model_parallel
        if self.global_batch % (self.micro_batch * dp):
            raise ValueError(
                f"global_batch {self.global_batch} must be a multiple of micro_batch*dp = {self.micro_batch}*{dp}"
            )
        mc = self.model_config()
        if mc.num_layers % self.pp:
            raise ValueError(f"num_layers {mc.num_layers} is not divisible by pp {self.pp}")
        if mc.num_attention_heads % self.tp:
            raise ValueError(f"num_attention_heads {mc.num_attention_heads} is not divisible by tp {self.tp}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown pretrain config field(s): {', '.join(unknown)}")
        return cls(**d)
