"""Shared layers of the backbone builder, all on channels-last tensors ``(B, H, W, C)``: norms, the channel mixers
of the MLP slot (registered: ``mlp``, ``convnext``) and the classifier heads (registered: ``linear``, ``mlp``).

Norms are named so configs can pick them:
- ``layernorm``: per-token LayerNorm over the channels (ConvFormer/CAFormer block norm, v2 stem/downsample norm);
- ``groupnorm1``: GroupNorm with one group, i.e. statistics over (H, W, C) per sample with a per-channel affine
  (PoolFormer v1 with bias, eps 1e-5; "modified LayerNorm" of IdentityFormer/RandFormer/PoolFormerV2 without
  bias, eps 1e-6). On a pooled vector ``(B, C)`` it reduces to ``layernorm``;
- ``batchnorm``: BatchNorm2d on the NCHW view (always with a bias; e.g. the stem of MobileNet-style models).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..mixers import create_act, register_channel_mixer
from .registry import HEADS

__all__ = [
    "GRN",
    "NORMS",
    "BatchNorm",
    "ClassifierHead",
    "ConvNeXtMlp",
    "GroupNorm1",
    "LayerNorm",
    "Mlp",
    "MlpHead",
    "Scale",
    "create_norm",
    "init_weights",
    "linear_head",
    "mlp_head",
]


class LayerNorm(nn.Module):
    """LayerNorm over the last (channel) dim, optional bias."""

    def __init__(self, dim: int, eps: float = 1e-6, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

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

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        if not bias:
            raise ValueError("batchnorm always has a bias (affine); use norm_bias=true with it.")
        super().__init__(dim, eps=eps)

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


def create_norm(name: str | None, dim: int, eps: float, bias: bool) -> nn.Module:
    """A norm by name (``None`` gives ``nn.Identity``)."""
    if name is None:
        return nn.Identity()
    if name not in NORMS:
        raise ValueError(f"Unknown norm {name!r}; known: {', '.join(sorted(NORMS))} (or null for none).")
    return NORMS[name](dim, eps=eps, bias=bias)


@register_channel_mixer("mlp")
class Mlp(nn.Module):
    """Channel MLP on the last dim: fc1 (C -> rC) -> act -> drop -> fc2 (rC -> C) -> drop."""

    def __init__(self, dim: int, ratio: float = 4.0, act: str = "starrelu", bias: bool = False, drop: float = 0.0):
        super().__init__()
        hidden_dim = int(ratio * dim)
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = create_act(act)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class GRN(nn.Module):
    """Global Response Normalization (Woo et al., "ConvNeXt V2", CVPR 2023) on ``(B, H, W, C)``:

        N = ||x||_2 over (H, W) / (mean over C of it + 1e-6);   out = gamma * (x * N) + beta + x

    ``gamma`` and ``beta`` start at zero (the identity)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


@register_channel_mixer("convnext")
class ConvNeXtMlp(nn.Module):
    """The residual branch of a ConvNeXt block as a channel mixer (ConvNeXt V2 with ``grn=True``):

        dw conv k x k (NCHW view) -> LayerNorm -> fc1 (C -> rC) -> act -> [GRN] -> drop -> fc2 -> drop

    Channels-last ``(B, H, W, C)`` in and out; used with no block norm in front (the LayerNorm is inside).
    """

    def __init__(
        self,
        dim: int,
        ratio: float = 4.0,
        kernel_size: int = 7,
        act: str = "gelu",
        bias: bool = True,
        conv_bias: bool = True,
        grn: bool = False,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_dim = int(ratio * dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=conv_bias)
        self.norm = LayerNorm(dim, eps=norm_eps, bias=True)
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = create_act(act)
        self.grn = GRN(hidden_dim) if grn else nn.Identity()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.grn(self.act(self.fc1(self.norm(x))))  # (B, H, W, hidden)
        return self.drop2(self.fc2(self.drop1(x)))


class Scale(nn.Module):
    """Learnable per-channel scale on the last dim (LayerScale on a branch, ResScale on a skip)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class MlpHead(nn.Module):
    """The ConvFormer/CAFormer head: fc1 (C -> rC) -> SquaredReLU -> LayerNorm (eps 1e-5) -> dropout -> fc2."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        hidden_ratio: float = 4.0,
        act: str = "squaredrelu",
        norm_eps: float = 1e-5,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(hidden_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = create_act(act)
        self.norm = LayerNorm(hidden, eps=norm_eps, bias=True)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


class ClassifierHead(nn.Module):
    """Global pool and final norm (in either order), dropout, then the classifier ``fc`` (``make_fc(num_classes)``).

    ``norm_before_pool=False`` (MetaFormer v2, timm): pool -> norm. ``True`` (official PoolFormer v1, Strip-MLP):
    the norm normalises the whole map, then pool. With ``pool_type=''`` the map is kept (NCHW out). NCHW in.
    """

    POOL_TYPES = ("avg", "max", "")

    def __init__(
        self,
        dim: int,
        make_fc: Callable[[int], nn.Module],
        num_classes: int,
        pool_type: str = "avg",
        norm: str | None = "layernorm",
        norm_eps: float = 1e-6,
        norm_before_pool: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.make_fc = make_fc
        self.norm_before_pool = norm_before_pool
        self.pool_type = self._check_pool(pool_type)
        self.norm = create_norm(norm, dim, eps=norm_eps, bias=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = make_fc(num_classes) if num_classes > 0 else nn.Identity()

    @classmethod
    def _check_pool(cls, pool_type: str) -> str:
        if pool_type not in cls.POOL_TYPES:
            raise ValueError(f"Unknown global_pool {pool_type!r}; use one of {cls.POOL_TYPES} ('' keeps the map).")
        return pool_type

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), and optionally a new pooling."""
        if pool_type is not None:
            self.pool_type = self._check_pool(pool_type)
        device = next((p.device for p in self.parameters()), None)
        self.fc = (self.make_fc(num_classes) if num_classes > 0 else nn.Identity()).to(device)
        self.fc.apply(init_weights)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.norm_before_pool:
            x = self.norm(x)
        if self.pool_type == "avg":
            x = x.mean(dim=(1, 2))  # (B, C)
        elif self.pool_type == "max":
            x = x.amax(dim=(1, 2))
        if not self.norm_before_pool:
            x = self.norm(x)
        x = self.drop(x)
        if not pre_logits:
            x = self.fc(x)
        return x if self.pool_type else x.permute(0, 3, 1, 2)


def init_weights(module: nn.Module) -> None:
    """The MetaFormer init: trunc-normal(std 0.02) weights and zero biases for every conv and linear layer."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@HEADS.register("linear")
def linear_head(
    dim: int,
    num_classes: int,
    pool_type: str = "avg",
    drop_rate: float = 0.0,
    norm: str | None = "layernorm",
    norm_eps: float = 1e-6,
    norm_before_pool: bool = False,
) -> ClassifierHead:
    """Pool and norm -> dropout -> Linear."""
    make_fc = partial(nn.Linear, dim)
    return ClassifierHead(dim, make_fc, num_classes, pool_type, norm, norm_eps, norm_before_pool, drop_rate)


@HEADS.register("mlp")
def mlp_head(
    dim: int,
    num_classes: int,
    pool_type: str = "avg",
    drop_rate: float = 0.0,
    norm: str | None = "layernorm",
    norm_eps: float = 1e-6,
    norm_before_pool: bool = False,
    hidden_ratio: float = 4.0,
    mlp_norm_eps: float = 1e-5,
    dropout: float = 0.0,
) -> ClassifierHead:
    """Pool and norm -> dropout -> the ConvFormer/CAFormer MLP classifier (``MlpHead``; ``dropout`` before fc2)."""
    make_fc = partial(MlpHead, dim, hidden_ratio=hidden_ratio, norm_eps=mlp_norm_eps, drop=dropout)
    return ClassifierHead(dim, make_fc, num_classes, pool_type, norm, norm_eps, norm_before_pool, drop_rate)
