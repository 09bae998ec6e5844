"""Shared pytest setup.

The Triton interpreter must be switched on before any module that defines Triton kernels is imported
(``@triton.jit`` decides at decoration time), so this runs first, at conftest import.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
