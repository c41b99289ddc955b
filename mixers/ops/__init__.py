"""Heavy kernels shared by mixers: each with a sequential reference, a chunked pure-PyTorch path and the fused
CUDA kernel where one exists; plus what they share: float32 compute under autocast and the backend dispatch."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["BACKENDS", "autocast_off", "compute_dtype", "use_fused"]

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


def use_fused(backend: str, kernel: str, fusable: bool, needs: str, backends: tuple[str, ...] = BACKENDS) -> bool:
    """The dispatch every scan shares: ``"auto"`` takes the fused ``mamba_ssm`` kernel when ``fusable`` (CUDA tensors,
    the kernel importable, its limits met), ``"torch"`` never, ``"fused"`` always, raising ``RuntimeError`` saying
    what it ``needs`` when it cannot. A backend not in ``backends`` raises ``ValueError`` naming the ``kernel`` (a
    kernel with more backends than ``BACKENDS`` lists them there and chooses those itself)."""
    if backend not in backends:
        raise ValueError(f"Unknown {kernel} backend {backend!r}; use one of {', '.join(backends)}.")
    if backend == "fused" and not fusable:
        raise RuntimeError(f"backend='fused' needs {needs}.")
    return fusable if backend == "auto" else backend == "fused"
