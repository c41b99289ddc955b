"""Shared layers of the backbone builder, all on channels-last tensors ``(B, H, W, C)``: the channel mixers
of the MLP slot (registered: ``mlp``, ``convnext``) and the classifier heads (registered: ``linear``, ``mlp``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
from timm.layers import get_device_dtype, trunc_normal_

from ..layers import LayerNorm, create_act, create_norm
from ..mixers import register_channel_mixer
from .registry import HEADS

__all__ = [
    "GRN",
    "ClassifierHead",
    "ConvNeXtMlp",
    "Mlp",
    "MlpHead",
    "Scale",
    "init_weights",
    "linear_head",
    "mlp_head",
]


@register_channel_mixer("mlp")
class Mlp(nn.Module):
    """Channel MLP on the last dim: fc1 (C -> rC) -> act -> drop -> fc2 (rC -> C) -> drop."""

    def __init__(
        self,
        dim: int,
        ratio: float = 4.0,
        act: str = "starrelu",
        bias: bool = False,
        drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden_dim = int(ratio * dim)
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias, **dd)
        self.act = create_act(act, **dd)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class GRN(nn.Module):
    """Global Response Normalization (Woo et al., "ConvNeXt V2", CVPR 2023) on ``(B, H, W, C)``:

        N = ||x||_2 over (H, W) / (mean over C of it + 1e-6);   out = gamma * (x * N) + beta + x

    ``gamma`` and ``beta`` start at zero (the identity). Computed as ``x (gamma N + 1) + beta``, one pass over x
    (the official form makes four, each into a new buffer), with the norm as ``sqrt(sum x²)`` (``vector_norm`` over
    the two non-innermost dims is ~4-10x slower on CPU); equal to the official form up to rounding."""

    def __init__(
        self, dim: int, eps: float = 1e-6, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ||x|| over (H, W), (B, 1, 1, C); the floor (float32's smallest normal, a literal so that FX traces it and
        # TorchScript compiles it) keeps an all-zero plane's gradient 0 (as vector_norm's), not NaN
        g = x.square().sum(dim=(1, 2), keepdim=True).clamp_min(1.1754943508222875e-38).sqrt()
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        return torch.addcmul(self.beta, x, self.gamma * n + 1)


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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden_dim = int(ratio * dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=conv_bias, **dd)
        self.norm = LayerNorm(dim, eps=norm_eps, bias=True, **dd)
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias, **dd)
        self.act = create_act(act, **dd)
        self.grn = GRN(hidden_dim, **dd) if grn else nn.Identity()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias, **dd)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.grn(self.act(self.fc1(self.norm(x))))  # (B, H, W, hidden)
        return self.drop2(self.fc2(self.drop1(x)))


class Scale(nn.Module):
    """Learnable per-channel scale on the last dim (LayerScale on a branch, ResScale on a skip)."""

    def __init__(
        self,
        dim: int,
        init_value: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value), device=device, dtype=dtype))

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(hidden_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.act = create_act(act, **dd)
        self.norm = LayerNorm(hidden, eps=norm_eps, bias=True, **dd)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, num_classes, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


class ClassifierHead(nn.Module):
    """Global pool and final norm (in either order), dropout, then the classifier ``fc`` (``make_fc(num_classes,
    device=..., dtype=...)``).

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.make_fc = make_fc
        self.norm_before_pool = norm_before_pool
        self.pool_type = self._check_pool(pool_type)
        self.norm = create_norm(norm, dim, eps=norm_eps, bias=True, **dd)
        self.drop = nn.Dropout(drop_rate)
        self.fc = make_fc(num_classes, **dd) if num_classes > 0 else nn.Identity()

    @classmethod
    def _check_pool(cls, pool_type: str) -> str:
        if pool_type not in cls.POOL_TYPES:
            raise ValueError(f"Unknown global_pool {pool_type!r}; use one of {cls.POOL_TYPES} ('' keeps the map).")
        return pool_type

    def reset(
        self,
        num_classes: int,
        pool_type: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """A new, freshly initialised classifier for ``num_classes`` (0: none), in the head's train/eval mode, and
        optionally a new pooling. ``device``/``dtype`` default to those of the head's parameters (the model passes
        its own: a head may have none left)."""
        if pool_type is not None:
            self.pool_type = self._check_pool(pool_type)
        dd = get_device_dtype(self, device=device, dtype=dtype)
        self.fc = self.make_fc(num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.fc.apply(init_weights)
        self.fc.train(self.training)

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
    """The MetaFormer init: trunc-normal(std 0.02) weights and zero biases for every conv and linear layer. Layers
    on the meta device are left alone: they hold no values, and timm's ``trunc_normal_`` runs its clamp there
    through torch's Python reference kernels (about 10 ms a layer, seconds for a large model built on meta)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.is_meta:
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
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ClassifierHead:
    """Pool and norm -> dropout -> Linear."""
    make_fc = partial(nn.Linear, dim)
    dd = dict(device=device, dtype=dtype)
    return ClassifierHead(dim, make_fc, num_classes, pool_type, norm, norm_eps, norm_before_pool, drop_rate, **dd)


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
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> ClassifierHead:
    """Pool and norm -> dropout -> the ConvFormer/CAFormer MLP classifier (``MlpHead``; ``dropout`` before fc2)."""
    make_fc = partial(MlpHead, dim, hidden_ratio=hidden_ratio, norm_eps=mlp_norm_eps, drop=dropout)
    dd = dict(device=device, dtype=dtype)
    return ClassifierHead(dim, make_fc, num_classes, pool_type, norm, norm_eps, norm_before_pool, drop_rate, **dd)
