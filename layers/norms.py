"""Norms on channels-last tensors ``(B, H, W, C)``, by name (``create_norm``), shared by the builder and the mixers.

Norms are named so configs can pick them:
- ``layernorm``: per-token LayerNorm over the channels (ConvFormer/CAFormer block norm, v2 stem/downsample norm);
- ``groupnorm1``: GroupNorm with one group, i.e. statistics over (H, W, C) per sample with a per-channel affine
  (PoolFormer v1 with bias, eps 1e-5; "modified LayerNorm" of IdentityFormer/RandFormer/PoolFormerV2 without
  bias, eps 1e-6). On a pooled vector ``(B, C)`` it reduces to ``layernorm``;
- ``batchnorm``: BatchNorm2d on the NCHW view (always with a bias; e.g. the stem of MobileNet-style models).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["NORMS", "BatchNorm", "GroupNorm1", "LayerNorm", "create_norm"]


class LayerNorm(nn.Module):
    """LayerNorm over the last (channel) dim, optional bias."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-6,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **dd))
        self.bias = nn.Parameter(torch.zeros(dim, **dd)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"


class GroupNorm1(LayerNorm):
    """GroupNorm(1) on ``(B, H, W, C)``: mean/var over (H, W, C) per sample, then a per-channel affine. On a pooled
    ``(B, C)`` vector it is the LayerNorm over C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # group_norm on the channels-first view, (B, C, H, W) or (B, C) alike (``movedim`` reads no shape, so the
        # layer traces with FX); on a map this is group_norm's channels_last kernel, ~2x faster on CPU than
        # layer_norm over (H, W, C) plus a separate affine
        return F.group_norm(x.movedim(-1, 1), 1, self.weight, self.bias, self.eps).movedim(1, -1)


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d on ``(B, H, W, C)`` (through its NCHW view) or on a pooled ``(B, C)`` vector.

    ``forward`` is ``nn.BatchNorm2d.forward`` written out on the channels-first view (no ``super()`` call and no
    rank check, so the layer scripts and traces); the same statistics, updates and outputs."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not bias:
            raise ValueError("batchnorm always has a bias (affine); use norm_bias=true with it.")
        super().__init__(dim, eps=eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        y = F.batch_norm(
            x.movedim(-1, 1),
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch_stats,
            momentum,
            self.eps,
        )
        return y.movedim(1, -1)


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "groupnorm1": GroupNorm1, "batchnorm": BatchNorm}


def create_norm(
    name: str | None,
    dim: int,
    eps: float,
    bias: bool,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A norm by name (``None`` gives ``nn.Identity``), its parameters created on ``device`` in ``dtype``."""
    if name is None:
        return nn.Identity()
    if name not in NORMS:
        raise ValueError(f"Unknown norm {name!r}; known: {', '.join(sorted(NORMS))} (or null for none).")
    return NORMS[name](dim, eps=eps, bias=bias, device=device, dtype=dtype)
