"""Forward MACs of a model, by kind: matmul/conv (``torch.utils.flop_counter``), FFT and scans, counted on the meta
device (no weights are computed on). Used by ``benchmark.py`` and ``collect_results.py``.

FFTs count 5·n·log2(n) real FLOPs per complex transform (half per real one); ``cumsum``/``cumprod``/
``logcumsumexp`` one multiply-add per element; modules with a ``scan_macs(*inputs)`` method (the selective scans)
add their own count; MACs are FLOPs / 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FFT_RULES", "SCAN_RULES", "MacCount", "count_macs"]


def _fft_flops(points: int, transforms: int, complex_input: bool) -> int:
    """5·n·log2(n) real FLOPs per complex transform, half of that per real one."""
    if points <= 1:
        return 0
    per = 5.0 * points * math.log2(points)
    return round(transforms * (per if complex_input else per / 2))


def _fft_r2c_flop(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None, **kw: Any) -> int:
    points = math.prod(x_shape[d] for d in dim)
    return _fft_flops(points, math.prod(x_shape) // points, complex_input=False)


def _fft_c2r_flop(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None, **kw: Any) -> int:
    points = math.prod(out_shape[d] for d in dim)  # the real output's sizes
    return _fft_flops(points, math.prod(out_shape) // points, complex_input=False)


def _fft_c2c_flop(x_shape: Sequence[int], dim: Sequence[int], *args: Any, out_shape: Any = None, **kw: Any) -> int:
    points = math.prod(x_shape[d] for d in dim)
    return _fft_flops(points, math.prod(x_shape) // points, complex_input=True)


def _scan_flop(x_shape: Sequence[int], *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return 2 * math.prod(out_shape)  # one multiply-add per element


aten = torch.ops.aten
FFT_RULES = {aten._fft_r2c: _fft_r2c_flop, aten._fft_c2r: _fft_c2r_flop, aten._fft_c2c: _fft_c2c_flop}
SCAN_RULES = {aten.cumsum: _scan_flop, aten.cumprod: _scan_flop, aten.logcumsumexp: _scan_flop}


@dataclass
class MacCount:
    """Forward MACs of one call, by kind."""

    matmul: int = 0
    fft: int = 0
    scan: int = 0

    @property
    def total(self) -> int:
        return self.matmul + self.fft + self.scan


def count_macs(model: nn.Module, inputs: torch.Tensor) -> MacCount:
    """Forward MACs of ``model(inputs)`` (FLOPs / 2) with the FFT and scan rules above; run it on the meta device."""
    fft_ops = {str(op) for op in FFT_RULES}
    scan_ops = {str(op) for op in SCAN_RULES}
    module_scan_flops = 0

    def add_module_scan(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        nonlocal module_scan_flops
        module_scan_flops += 2 * int(module.scan_macs(*args))

    hooks = [m.register_forward_hook(add_module_scan) for m in model.modules() if hasattr(m, "scan_macs")]
    try:
        with FlopCounterMode(display=False, custom_mapping={**FFT_RULES, **SCAN_RULES}) as counter:
            model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    count = MacCount(scan=module_scan_flops // 2)
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        if str(op) in fft_ops:
            count.fft += flops // 2
        elif str(op) in scan_ops:
            count.scan += flops // 2
        else:
            count.matmul += flops // 2
    return count
