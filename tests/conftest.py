"""Shared pytest setup.

The Triton interpreter must be switched on before any module that defines Triton kernels is imported
(``@triton.jit`` decides at decoration time), so this runs first, at conftest import.

The suite runs against its own cache root: the entries of the user's cache (the converted SmolLM2
folder, built once per machine) are linked in, but not the trained verifiers. Whether the default
gate consults a verifier must not depend on whether someone ran `synpro train-verifier` on this
machine (a trusted one scales every faithfulness score; CI once failed on exactly that). Tests of
the verifier build their own. Under pytest-xdist the workers inherit the controller's root.

`make test` runs the modules on two pytest-xdist workers, whole modules at a time (their module
fixtures are built once). The modules are ordered by the seconds they took in a full run
(module_seconds.json), longest first, so that the short ones fill the gaps at the end. The numbers
only order the run; a module missing from the file goes last.
"""
import atexit
import json
import os
import shutil
import sys
import tempfile

# Under pytest-xdist each worker (and every process a test starts) gets its share of the cores as
# threads: with torch's default of one OpenMP thread per core in both workers, spinning threads
# starved each other (the e2e loop took 640 s instead of 216 s serial).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads)

import pytest  # noqa: E402
import torch  # noqa: E402  (after the thread settings above)

from synpro_megatron.fsutil import cache_root  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_SUITE_CACHE_VAR = "SYNPRO_TEST_SUITE_CACHE"


def _suite_cache_root() -> str:
    inherited = os.environ.get(_SUITE_CACHE_VAR)
    if inherited and os.path.isdir(inherited):  # an xdist worker: the controller made it
        return inherited
    user_root = cache_root()
    suite_root = tempfile.mkdtemp(prefix="synpro-test-cache-")
    atexit.register(shutil.rmtree, suite_root, ignore_errors=True)
    if user_root.is_dir():
        for entry in user_root.iterdir():
            if not entry.name.startswith("verifier-"):
                os.symlink(entry, os.path.join(suite_root, entry.name))
    os.environ[_SUITE_CACHE_VAR] = suite_root
    return suite_root


os.environ["SYNPRO_CACHE"] = _suite_cache_root()

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "module_seconds.json")) as _f:
    MODULE_SECONDS = json.load(_f)


def pytest_collection_modifyitems(config, items):
    # stable: the tests of one module keep their order
    items.sort(key=lambda item: -MODULE_SECONDS.get(os.path.basename(str(item.fspath)), -1))


@pytest.fixture(autouse=True, scope="module")
def _clean_process_after_module():
    """A module that loads a checkpoint in-process (the probe's tests) keeps the gloo group, Megatron's
    parallel state and the CPU patches for its later tests, as a user's process would. The next module
    must find the process clean whatever order the modules run in (a module fixture that calls
    init_process_group failed when it came after them)."""
    yield
    if "synpro_megatron.pretrain.trainer" in sys.modules:
        sys.modules["synpro_megatron.pretrain.trainer"].destroy_distributed()
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
