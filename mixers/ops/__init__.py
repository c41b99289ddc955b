"""Heavy kernels shared by mixers: each with a sequential reference, a chunked pure-PyTorch path and the fused
CUDA kernel where one exists; plus the one helper they share for running in float32 under autocast."""

from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device_type`` (FFTs and scans compute in float32), a no-op where autocast does not
    exist (e.g. the meta device used for FLOP counting)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
