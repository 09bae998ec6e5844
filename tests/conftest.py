"""Shared pytest setup.

The Triton interpreter must be switched on before any module that defines Triton kernels is imported
(``@triton.jit`` decides at decoration time), so this runs first, at conftest import.

The suite runs against its own cache root: the entries of the user's cache (the converted SmolLM2
folder, built once per machine) are linked in, but not the trained verifiers. Whether the default
gate consults a verifier must not depend on whether someone ran `synpro train-verifier` on this
machine (a trusted one scales every faithfulness score; CI once failed on exactly that). Tests of
the verifier build their own.
"""
import atexit
import os
import shutil
import tempfile

import torch

from synpro_megatron.fsutil import cache_root

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _suite_cache_root() -> str:
    user_root = cache_root()
    suite_root = tempfile.mkdtemp(prefix="synpro-test-cache-")
    atexit.register(shutil.rmtree, suite_root, ignore_errors=True)
    if user_root.is_dir():
        for entry in user_root.iterdir():
            if not entry.name.startswith("verifier-"):
                os.symlink(entry, os.path.join(suite_root, entry.name))
    return suite_root


os.environ["SYNPRO_CACHE"] = _suite_cache_root()
