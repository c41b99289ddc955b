"""Multi-head self-attention mixer (Vaswani et al. 2017), as in stages 3-4 of CAFormer (MetaFormer Baselines).

    q, k, v = split(x W_qkv),  out = softmax(q k^T / sqrt(d_h)) v W_proj

over all H*W tokens of the stage, read row-major from the grid (a reshape, no copy). ``head_dim`` = 32 and
``num_heads`` = C // 32 (at least 1) by default; qkv and proj have no bias. No positional embedding (as in
the paper), so any grid works; cost grows with (H*W)^2. Uses ``F.scaled_dot_product_attention`` (fused
kernels on CUDA, the math path elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_mixer

__all__ = ["Attention"]


@register_mixer("attention")
class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        num_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.head_dim = head_dim
        self.num_heads = num_heads if num_heads is not None else max(dim // head_dim, 1)
        self.attn_dim = self.num_heads * head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, H, W, self.attn_dim)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}"
