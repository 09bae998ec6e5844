"""Multi-GPU GRPO: `synpro train-generator --gpus N` relaunches itself under `accelerate launch`.

The paper trains each generator with DeepSpeed ZeRO-2 over 4-5 GPUs and vLLM colocated; FSDP is
the alternative for machines without DeepSpeed. Each rank keeps its own colocated vLLM engine
(TRL's `vllm_mode="colocate"`), so generation scales with the ranks too. The accelerate config is
written next to the run's work folder, so the exact launch can be read back after a failure.

Already inside a distributed launch (torchrun, accelerate, `srun` with LOCAL_RANK set), nothing
is relaunched: the ranks are there.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

STRATEGIES = ("zero2", "fsdp")


def accelerate_config(num_gpus: int, strategy: str) -> str:
    """The accelerate config (YAML text) for one node with `num_gpus` processes."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if num_gpus < 2:
        raise ValueError(f"a multi-GPU launch needs at least 2 GPUs, got {num_gpus}")
    common = ["compute_environment: LOCAL_MACHINE", "machine_rank: 0", "num_machines: 1",
              f"num_processes: {num_gpus}", "mixed_precision: bf16", "main_training_function: main",
              "same_network: true", "use_cpu: false"]
    if strategy == "zero2":
        body = ["distributed_type: DEEPSPEED", "deepspeed_config:", "  zero_stage: 2",
                "  offload_optimizer_device: none", "  offload_param_device: none", "  zero3_init_flag: false"]
    else:
        # FSDP2, full state dict at save so the saved generator is an ordinary HF folder
        body = ["distributed_type: FSDP", "fsdp_config:", "  fsdp_version: 2",
                "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP", "  fsdp_state_dict_type: FULL_STATE_DICT",
                "  fsdp_cpu_ram_efficient_loading: true", "  fsdp_reshard_after_forward: true"]
    return "\n".join(common + body) + "\n"


def inside_distributed_launch() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch_command(argv: Sequence[str], num_gpus: int, strategy: str, config_dir: Path) -> list[str]:
    """`accelerate launch` of this same `synpro train-generator` command line over `num_gpus`
    processes; `argv` is the subcommand's arguments as given (the --gpus flag is kept: the ranks
    see LOCAL_RANK and do not relaunch)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"accelerate_{strategy}_{num_gpus}gpu.yaml"
    path.write_text(accelerate_config(num_gpus, strategy), encoding="utf-8")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path),
            "-m", "synpro_megatron.cli", *argv]


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
