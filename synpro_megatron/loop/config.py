"""`LoopConfig`: everything `synpro run` needs, read from one YAML or JSON file.

Example (every field but `token_budget` and one of `data`/`input` has a default):

    model: tiny                    # tiny | 400m | 1b
    input: organic.jsonl.gz        # prepared into RUN_DIR/data/organic (or give `data: PREFIX`)
    token_budget: 2000000
    max_rounds: 2
    parallel: {tp: 1, pp: 1, nproc_per_node: 2, nnodes: 1}
    train: {micro_batch: 2, global_batch: 8, eval_interval: 20, chunk_evals: 1}
    plateau: {window: 3, rel_threshold: 0.01, patience: 2, min_steps_after_refresh: 40}
    generators: {kinds: [rephrase, reformat]}
    blend: {organic: 0.5, new_round: {rephrase: 0.25, reformat: 0.25}, earlier_rounds: 0.1}

Unknown or ill-typed fields are errors that name the file and the dotted field.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .plateau import PlateauConfig

GENERATOR_KINDS = ("rephrase", "reformat")
LAUNCHERS = ("auto", "local", "srun")


class ConfigError(ValueError):
    pass


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    nproc_per_node: int = 1  # training processes per node
    nnodes: int = 1
    # auto: srun across the allocation when nnodes > 1, else torchrun (or one process) locally
    launcher: str = "auto"
    master_port: int = 29500
    # synthesis over the allocation: one generation engine per GPU (per vllm_tp GPUs) on every node.
    # None: nnodes / nproc_per_node // vllm_tp. Inside Slurm the ranks start with srun, each with
    # its rank and the world on its command line; outside, with torchrun on this node.
    synthesis_nodes: Optional[int] = None
    synthesis_tasks_per_node: Optional[int] = None
    vllm_tp: int = 1


@dataclass
class TrainConfig:
    micro_batch: int = 2
    global_batch: int = 8
    seq_length: Optional[int] = None  # default: the model config's
    lr: float = 6e-4
    eval_interval: int = 20
    save_interval: int = 50
    # a pretrain chunk runs this many eval intervals, then the plateau detector looks at the loss;
    # chunks end on eval boundaries so every chunk ends with a fresh evaluation
    chunk_evals: int = 1
    tokenizer: Optional[str] = None
    value_documents: bool = False  # score every training document in the step (pretrain --value-documents)


@dataclass
class GeneratorConfig:
    """The round stages. The *_args lists go verbatim to the commands after filling in {run_dir},
    {round_dir} (RUN_DIR/rounds/round_K, where the round's probe and generators live), {round} and {checkpoint}, e.g.
    probe_args: [--doc-losses]; synth_args: [--select, "top-loss:0.5", --doc-losses,
    "{round_dir}/probe/doc_losses.jsonl"]; train_args: [--steps, "120"]."""

    kinds: List[str] = field(default_factory=lambda: list(GENERATOR_KINDS))
    train_args: List[str] = field(default_factory=list)  # passed verbatim to `synpro train-generator`
    synth_args: List[str] = field(default_factory=list)  # passed verbatim to `synpro synthesize`
    probe_args: List[str] = field(default_factory=list)  # passed verbatim to `synpro probe`
    judge_model: Optional[str] = None  # LLM faithfulness judge for train-generator and synthesize (--judge-model)
    quality_model: Optional[str] = None  # model-based quality scorer for train-generator (--quality-model)
    # trained faithfulness verifier for train-generator and synthesize (--verifier): auto | train | off | folder
    verifier: str = "auto"
    verifier_rejects: bool = False  # --verifier-rejects: its Unfaithful labels fail the gate

    def reward_model_args(self, stage: str) -> List[str]:
        """The --judge-model / --quality-model / --verifier(-rejects) flags for `train` or `synth` commands."""
        args = ["--judge-model", self.judge_model] if self.judge_model else []
        if self.verifier != "auto":
            args += ["--verifier", self.verifier]
        if self.verifier_rejects:
            args.append("--verifier-rejects")
        if stage == "train" and self.quality_model:
            args += ["--quality-model", self.quality_model]
        return args


@dataclass
class BlendWeights:
    """Target weights of the phase that starts when round K is blended in.

    Earlier rounds stay in the schedule: together they get `earlier_rounds`, split in proportion
    to their weights at the end of the previous phase. Weights are normalised to sum to 1 (so for
    round 1, which has no earlier rounds, `earlier_rounds` simply drops out).
    """

    organic: float = 0.5
    new_round: Dict[str, float] = field(default_factory=lambda: {"rephrase": 0.25, "reformat": 0.25})
    earlier_rounds: float = 0.1
    # a new round's source is read at most this many times over the rest of the budget (its weight
    # is cut and the rest goes to organic data); ~4 epochs of repeated data cost little (Muennighoff
    # et al. 2023), many more overfit. None: no limit.
    max_epochs: Optional[float] = 4.0


@dataclass
class LoopConfig:
    token_budget: int  # tokens of pretraining in total (all rounds, organic + synthetic)
    model: str = "tiny"
    data: Optional[str] = None  # organic dataset prefix written by `synpro prepare`
    input: Optional[str] = None  # raw JSONL(.gz), prepared into RUN_DIR/data/organic when `data` is unset
    held_out: float = 0.02  # fraction of `input` documents kept out of training for the held-out loss
    max_rounds: int = 3  # synthetic rounds at most; later plateaus just keep pretraining
    seed: int = 1234
    # seconds a stage gets to checkpoint after SIGTERM (torchrun's shutdown timeout); keep it
    # below the --signal lead time of the Slurm script
    preempt_grace_s: int = 240
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plateau: PlateauConfig = field(default_factory=PlateauConfig)
    generators: GeneratorConfig = field(default_factory=GeneratorConfig)
    blend: BlendWeights = field(default_factory=BlendWeights)

    # ---- derived -----------------------------------------------------------------------------
    def seq_length(self) -> int:
        from synpro_megatron.pretrain.config import get_model_config

        return self.train.seq_length or get_model_config(self.model).seq_length

    def budget_samples(self) -> int:
        return self.token_budget // self.seq_length()

    def total_steps(self) -> int:
        """Steps of the whole run; fixed up front so the LR schedule spans all chunks."""
        return -(-self.budget_samples() // self.train.global_batch)

    def world_size(self) -> int:
        return self.parallel.nproc_per_node * self.parallel.nnodes

    # ---- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        from synpro_megatron.pretrain.config import MODEL_CONFIGS

        def bad(name, msg, value):
            raise ConfigError(f"field '{name}': {msg}, got {value!r}")

        if self.model not in MODEL_CONFIGS:
            bad("model", f"must be one of {sorted(MODEL_CONFIGS)}", self.model)
        if not self.data and not self.input:
            raise ConfigError("field 'data' or 'input': one of them is required (a prepared prefix or a JSONL file)")
        if self.token_budget <= 0:
            bad("token_budget", "must be > 0", self.token_budget)
        if self.max_rounds < 0:
            bad("max_rounds", "must be >= 0", self.max_rounds)
        p = self.parallel
        for name in ("tp", "pp", "nproc_per_node", "nnodes"):
            if getattr(p, name) < 1:
                bad(f"parallel.{name}", "must be >= 1", getattr(p, name))
        if p.launcher not in LAUNCHERS:
            bad("parallel.launcher", f"must be one of {LAUNCHERS}", p.launcher)
        if self.world_size() % (p.tp * p.pp):
            bad("parallel", f"world size {self.world_size()} (nproc_per_node*nnodes) is not divisible by "
                f"tp*pp={p.tp * p.pp}", dataclasses.asdict(p))
        t = self.train
        for name in ("micro_batch", "global_batch", "eval_interval", "save_interval", "chunk_evals"):
            if getattr(t, name) < 1:
                bad(f"train.{name}", "must be >= 1", getattr(t, name))
        dp = self.world_size() // (p.tp * p.pp)
        if t.global_batch % (t.micro_batch * dp):
            bad("train.global_batch", f"must be a multiple of micro_batch*dp = {t.micro_batch}*{dp}", t.global_batch)
        if t.seq_length is not None and t.seq_length < 1:
            bad("train.seq_length", "must be >= 1", t.seq_length)
        if self.budget_samples() < t.global_batch:
            bad("token_budget", f"is less than one global batch ({t.global_batch} x {self.seq_length()} tokens)",
                self.token_budget)
        self.plateau.validate("plateau")
        kinds = self.generators.kinds
        if not kinds or len(set(kinds)) != len(kinds) or any(k not in GENERATOR_KINDS for k in kinds):
            bad("generators.kinds", f"must be a non-empty list of distinct kinds from {GENERATOR_KINDS}", kinds)
        b = self.blend
        weights = {"blend.organic": b.organic, "blend.earlier_rounds": b.earlier_rounds}
        weights.update({f"blend.new_round.{k}": v for k, v in b.new_round.items()})
        for name, v in weights.items():
            if not v >= 0:
                bad(name, "must be >= 0", v)
        missing = [k for k in kinds if k not in b.new_round]
        if missing:
            bad("blend.new_round", f"needs a weight for every generator kind (missing {missing})", b.new_round)
        extra = [k for k in b.new_round if k not in kinds]
        if extra:
            bad("blend.new_round", f"has weights for kinds not in generators.kinds ({extra})", b.new_round)
        if b.organic + sum(b.new_round.values()) <= 0:
            bad("blend", "organic + new_round weights must be > 0", dataclasses.asdict(b))
        if self.preempt_grace_s < 0:
            bad("preempt_grace_s", "must be >= 0", self.preempt_grace_s)

    # ---- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "LoopConfig":
        try:
            cfg = _build(cls, d, "")
            cfg.validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except ValueError as e:  # PlateauConfig.validate raises plain ValueError
            raise ConfigError(f"{source}: {e}") from None
        return cfg

    @classmethod
    def load(cls, path: str) -> "LoopConfig":
        if not os.path.exists(path):
            raise ConfigError(f"{path}: config file not found")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            if path.endswith(".json"):
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except Exception as e:  # noqa: BLE001 - any parse error becomes a ConfigError naming the file
            raise ConfigError(f"{path}: cannot parse: {e}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
        cfg = cls.from_dict(d, source=path)
        # relative data paths are relative to the config file, not to wherever `synpro run` started
        base = os.path.dirname(os.path.abspath(path))
        for name in ("data", "input"):
            v = getattr(cfg, name)
            if v and not os.path.isabs(v):
                setattr(cfg, name, os.path.normpath(os.path.join(base, v)))
        return cfg

    def save(self, path: str) -> None:
        from synpro_megatron.fsutil import atomic_write_json

        atomic_write_json(path, self.to_dict())


# ---- a small typed builder: dict -> nested dataclasses, errors naming the dotted field --------
def _build(cls, d, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"field '{prefix.rstrip('.') or '<top>'}': expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(repr(prefix + u) for u in unknown)}; "
                          f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        if name in d:
            kwargs[name] = _convert(hints[name], d[name], prefix + name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"field '{prefix + name}' is required")
    return cls(**kwargs)


def _convert(tp, v, name):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if v is None:
            return None
        return _convert(next(a for a in args if a is not type(None)), v, name)
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, name + ".")
    if origin in (list, List):
        if not isinstance(v, list):
            raise ConfigError(f"field '{name}': expected a list, got {v!r}")
        return [_convert(args[0], x, f"{name}[{i}]") for i, x in enumerate(v)]
    if origin in (dict, Dict):
        if not isinstance(v, dict):
            raise ConfigError(f"field '{name}': expected a mapping, got {v!r}")
        return {str(k): _convert(args[1], x, f"{name}.{k}") for k, x in v.items()}
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"field '{name}': expected true/false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            # YAML reads 2e6 as a string and 2.0e+6 as a float: accept integral numbers written that way
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"field '{name}': expected an integer, got {v!r}") from None
            if isinstance(v, bool) or not f.is_integer():
                raise ConfigError(f"field '{name}': expected an integer, got {v!r}")
            return int(f)
        return v
    if tp is float:
        if isinstance(v, bool):
            raise ConfigError(f"field '{name}': expected a number, got {v!r}")
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"field '{name}': expected a number, got {v!r}") from None
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"field '{name}': expected a string, got {v!r}")
        return v
    return v
