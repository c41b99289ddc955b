"""Identity token mixer of IdentityFormer (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024).

    out = x

The block branch becomes Norm(x): no token mixing at all, the lower bound of the MetaFormer family.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .registry import register_mixer

__all__ = ["IdentityMixer"]


@register_mixer("identity")
class IdentityMixer(nn.Module):
    def __init__(
        self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:  # no parameters: device and dtype are accepted as by every mixer
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
