"""Inverted separable convolution mixer of ConvFormer / CAFormer (Yu et al., "MetaFormer Baselines for Vision").

    out = PW2( act2( DW_kxk( act1( PW1(x) ) ) ) )

PW1: C -> r*C (r = expand = 2), no bias; act1 = StarReLU; DW: depthwise k x k (k = 7, padding k//2),
no bias; act2 = identity; PW2: r*C -> C, no bias. No norm inside. The pointwise layers are Linear layers
on the channels-last tensor, as in sail-sg/metaformer ``SepConv``; only the depthwise conv sees an NCHW view
(channels_last memory, no copy).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import create_act
from .registry import register_mixer

__all__ = ["SepConv"]


@register_mixer("sepconv")
class SepConv(nn.Module):
    def __init__(
        self,
        dim: int,
        expand: float = 2.0,
        kernel_size: int = 7,
        act1: str = "starrelu",
        act2: str = "identity",
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if kernel_size % 2 != 1:
            raise ValueError(f"sepconv: kernel_size must be odd so the grid keeps its size; got {kernel_size}.")
        hidden = int(expand * dim)
        self.pwconv1 = nn.Linear(dim, hidden, bias=bias, **dd)
        self.act1 = create_act(act1, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=bias, **dd)
        self.act2 = create_act(act2, **dd)
        self.pwconv2 = nn.Linear(hidden, dim, bias=bias, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.pwconv1(x))  # (B, H, W, rC)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # depthwise on the NCHW view
        return self.pwconv2(self.act2(x))  # (B, H, W, C)
