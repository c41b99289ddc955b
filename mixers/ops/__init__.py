"""Heavy kernels shared by mixers: each with a sequential reference, a chunked pure-PyTorch path and the fused
CUDA kernel where one exists; plus what they share: float32 compute under autocast, the backend dispatch and the
lazy import of the optional kernels."""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from collections.abc import Callable

import torch

__all__ = ["BACKENDS", "autocast_off", "compute_dtype", "kernel_importable", "optional_kernel", "use_fused"]

BACKENDS = ("auto", "torch", "fused")


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device_type`` (FFTs and scans compute in float32), a no-op where autocast does not
    exist (e.g. the meta device used for FLOP counting)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype decays, scans and FFTs compute in: float32, or float64 for float64 input."""
    return torch.promote_types(dtype, torch.float32)


def use_fused(backend: str, kernel: str, fusable: bool, needs: str) -> bool:
    """The dispatch every scan shares: ``"auto"`` takes the fused ``mamba_ssm`` kernel when ``fusable`` (CUDA tensors,
    the kernel importable, its limits met), ``"torch"`` never, ``"fused"`` always, raising ``RuntimeError`` saying
    what it ``needs`` when it cannot. Another backend raises ``ValueError`` naming the ``kernel`` (a kernel with more
    backends chooses those before calling this)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown {kernel} backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend == "fused" and not fusable:
        raise RuntimeError(f"backend='fused' needs {needs}.")
    return fusable if backend == "auto" else backend == "fused"


@functools.cache
def optional_kernel(module: str, name: str) -> Callable | None:
    """``module.name`` imported on first use, or None where it does not import (not installed, or a broken CUDA or
    Triton build): the fused kernels are optional, so nothing imports them when the package is imported."""
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError:  # not installed: the usual case, silent
        return None
    except Exception as error:  # installed but broken (a CUDA or Triton build, a name it imports has moved)
        warnings.warn(
            f"{module}.{name} does not import ({type(error).__name__}: {error}); the torch path runs instead.",
            stacklevel=2,
        )
        return None


@torch.compiler.assume_constant_result
def kernel_importable(module: str, name: str) -> bool:
    """Whether ``optional_kernel(module, name)`` imports: a constant for ``torch.compile``, which would otherwise
    trace into the import and break the graph there (an import that fails cannot be traced)."""
    return optional_kernel(module, name) is not None
