"""Optional CUDA kernel backends (`model.<mixer>.backend`): load one lazily, or fail in one line.

The packages are pyproject.toml's `kernels` extra (flash-linear-attention, mamba-ssm). The torch path of every
mixer stays the reference; tests/model/test_kernels.py compares each kernel with it on a GPU.
"""

from __future__ import annotations

import importlib

from torch import Tensor

# backend name (also the package's import name, which tests/model/test_kernels.py relies on) -> its pip package
PACKAGES = {"fla": "flash-linear-attention", "mamba_ssm": "mamba-ssm"}


def load(section: str, backend: str, module: str, name: str):
    """`module.name` for `model.<section>.backend=<backend>`; a missing package raises one ImportError line."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:  # AttributeError: an installed version without `name`
        raise ImportError(f"model.{section}.backend={backend} needs {PACKAGES.get(backend, backend)} and a CUDA GPU "
                          f'(pip install -e ".[kernels]"); use model.{section}.backend=torch') from err


def require_cuda(x: Tensor, section: str, backend: str) -> None:
    """The kernels are Triton / CUDA only: a CPU tensor raises one RuntimeError line."""
    if not x.is_cuda:
        raise RuntimeError(f"model.{section}.backend={backend} runs on CUDA tensors only; "
                           f"use model.{section}.backend=torch on CPU")
