"""Pooling token mixer of PoolFormer (Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022).

    out = AvgPool_k(x) - x

with a k x k window, stride 1, padding k // 2 and ``count_include_pad=False``: at the borders the mean is
over the valid neighbours only (4 at a corner, 6 on an edge, 9 inside for k = 3). The ``- x`` is there because
the block adds its own residual; the branch is then a Laplacian-like filter. No parameters.
Code followed: sail-sg/poolformer ``Pooling``, sail-sg/metaformer ``Pooling``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_mixer

__all__ = ["Pooling"]


@register_mixer("pooling")
class Pooling(nn.Module):
    def __init__(
        self,
        dim: int,
        pool_size: int = 3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:  # no parameters: device and dtype are accepted as by every mixer
        super().__init__()
        if pool_size % 2 != 1:
            raise ValueError(f"pooling: pool_size must be odd so the grid keeps its size; got {pool_size}.")
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, H, W, C) -> NCHW view of the same memory (channels_last format), pooled, back to (B, H, W, C)
        y = x.permute(0, 3, 1, 2)
        y = F.avg_pool2d(y, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False)
        return y.permute(0, 2, 3, 1) - x

    def extra_repr(self) -> str:
        return f"pool_size={self.pool_size}"
