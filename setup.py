"""Install SynPro-Megatron.

`kernels/` and `recipes/` live at the top of the repository but install as
`synpro_megatron.kernels` and `synpro_megatron.recipes`: a top-level package named
`kernels` would shadow the unrelated PyPI package of that name, which transformers imports.
The C++ blend-index builder is optional: when it cannot compile, a numpy fallback with
byte-identical output is used (and `synpro_megatron.blending` warns once).
"""
import os
import re

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext
except ImportError:  # building without pybind11: ship the pure-Python fallback only
    Pybind11Extension = None
    build_ext = None

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, "synpro_megatron", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def read_requirements(name):
    with open(os.path.join(HERE, "requirements", name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


ext_modules = []
cmdclass = {}
if Pybind11Extension is not None:
    ext_modules.append(
        Pybind11Extension(
            "synpro_megatron._blend",
            ["csrc/blend.cpp"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    )
    # optional=True: a machine without a compiler still installs, with the numpy fallback.
    ext_modules[0].optional = True
    cmdclass["build_ext"] = build_ext

setup(
    name="synpro-megatron",
    version=read_version(),
    description="Model-aware synthetic pretraining data (SynPro) as a Megatron-Core plugin",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "synpro_megatron",
        "synpro_megatron.data",
        "synpro_megatron.pretrain",
        "synpro_megatron.blending",
        "synpro_megatron.influence",
        "synpro_megatron.generators",
        "synpro_megatron.rewards",
        "synpro_megatron.rl",
        "synpro_megatron.loop",
        "synpro_megatron.eval",
        "synpro_megatron.kernels",
        "synpro_megatron.recipes",
    ],
    package_dir={
        "synpro_megatron": "synpro_megatron",
        "synpro_megatron.kernels": "kernels",
        "synpro_megatron.recipes": "recipes",
    },
    package_data={"synpro_megatron": ["assets/*.gz", "assets/*.jsonl", "assets/*.md"]},
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=read_requirements("cpu.txt"),
    extras_require={
        # vllm and transformer-engine need CUDA; never list the PyPI package named apex (an unrelated web toolkit).
        # vllm: the range TRL 1.16 supports (0.22-0.31), which also has the worker reload_weights(weights_path=...)
        # that VLLMBackend calls; deepspeed: ZeRO-2 for multi-GPU GRPO (train-generator --gpus N).
        "gpu": ["vllm>=0.22,<0.32", "transformer-engine[pytorch]>=2.0", "triton>=3.1", "deepspeed>=0.16"],
        "dev": read_requirements("dev.txt"),
    },
    entry_points={
        "console_scripts": ["synpro = synpro_megatron.cli:main"],
        "nemo_run.cli": ["synpro = synpro_megatron.recipes.cli"],
    },
    zip_safe=False,
)
