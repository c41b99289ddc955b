"""The stems, downsampling layers and blocks the builder's specs name (registered in ``models/registry.py``).

Stems and downsampling layers take and return NCHW tensors; blocks take and return channels-last ``(B, H, W, C)``.
Their BatchNorms sit in NCHW convs on the NCHW *view* of channels-last memory (channels_last format, no copies).

| registry | name | module |
|---|---|---|
| stem | ``conv`` | ``Stem``: conv -> optional norm -> optional activation |
| downsample | ``conv`` | ``Downsample``: optional pre-norm -> strided conv |
| downsample | ``inverted_residual`` | ``InvertedResidualDownsample`` |
| block | ``metaformer`` | ``MetaFormerBlock``: ``x = x + mixer(norm1(x))``; ``x = x + mlp(norm2(x))`` |
| block | ``aff`` | ``AFFBlock``: ``x = x + mixer(norm1(mlp(norm2(x))))`` |
| block | ``inverted_residual`` | ``InvertedResidual`` (a conv stage; the stage's first block strides) |
| channel mixer | ``inverted_residual`` | ``InvertedResidual`` with its own skip, stride 1 |
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, make_divisible

from ..layers import create_act, create_norm
from ..mixers import create_channel_mixer, create_mixer, register_channel_mixer
from ..registry import Spec
from .layers import Scale
from .registry import BLOCKS, DOWNSAMPLES, STEMS

__all__ = [
    "AFFBlock",
    "ConvNormAct",
    "Downsample",
    "InvertedResidual",
    "InvertedResidualDownsample",
    "MetaFormerBlock",
    "Stem",
    "conv_out_grid",
    "weighted_average",
]


def conv_out_grid(conv: nn.Conv2d, grid: Sequence[int]) -> tuple[int, int]:
    """The output grid of ``conv`` for an input grid ``(H, W)``."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    return tuple((g + 2 * p[i] - k[i]) // s[i] + 1 for i, g in enumerate(grid))  # type: ignore[return-value]


@STEMS.register("conv")
class Stem(nn.Module):
    """Patch embedding: conv (NCHW) then an optional post-norm on channels and an optional activation."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        kernel_size: int = 7,
        stride: int = 4,
        padding: int = 2,
        norm: str | None = "layernorm",
        norm_eps: float = 1e-6,
        norm_bias: bool = False,
        bias: bool = True,
        act: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride = stride
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=padding, bias=bias, **dd)
        self.norm = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
        self.act = create_act(act, **dd) if act is not None else nn.Identity()

    def out_grid(self, grid: Sequence[int]) -> tuple[int, int]:
        return conv_out_grid(self.conv, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # (B, H/s, W/s, C)
        return self.act(self.norm(x)).permute(0, 3, 1, 2)  # NCHW view


@DOWNSAMPLES.register("conv")
class Downsample(nn.Module):
    """Optional pre-norm on channels, then a strided conv; NCHW in and out."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        norm: str | None = "layernorm",
        norm_eps: float = 1e-6,
        norm_bias: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride = stride
        self.norm = create_norm(norm, in_dim, eps=norm_eps, bias=norm_bias, **dd)
        self.conv = nn.Conv2d(in_dim, dim, kernel_size, stride=stride, padding=padding, bias=bias, **dd)

    def out_grid(self, grid: Sequence[int]) -> tuple[int, int]:
        return conv_out_grid(self.conv, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv(x)


class ConvNormAct(nn.Module):
    """Conv (no bias) -> BatchNorm -> activation (``act=None``: none), NCHW in and out; padding keeps the grid
    (up to the stride)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "silu",
        bn_eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, kernel_size // 2, groups=groups, bias=False, **dd)
        self.norm = nn.BatchNorm2d(out_dim, eps=bn_eps, **dd)
        # in place on the norm's fresh output (as timm's ConvNormAct): one buffer less per layer
        self.act = create_act(act, inplace=True, **dd) if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al., CVPR 2018), as in ml-cvnets (AFFNet, MobileViT):

        y = PWL(DW_3x3,stride(PW(x)))      PW: 1x1 conv-BN-act to make_divisible(in * expansion, 8) channels
                                           (omitted for expansion 1); DW: depthwise conv-BN-act; PWL: 1x1 conv-BN
        out = x + drop_path(y)  if stride 1 and in_dim == out_dim, else y

    Channels-last ``(B, H, W, C_in)`` -> ``(B, H/stride, W/stride, C_out)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        stride: int = 1,
        expansion: float = 4.0,
        act: str = "silu",
        drop_path: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride = stride
        hidden = in_dim if expansion == 1 else make_divisible(round(in_dim * expansion), 8)
        self.conv_pw = ConvNormAct(in_dim, hidden, 1, act=act, **dd) if expansion != 1 else nn.Identity()
        self.conv_dw = ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, act=act, **dd)
        self.conv_pwl = ConvNormAct(hidden, out_dim, 1, act=None, **dd)
        self.has_skip = stride == 1 and in_dim == out_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def out_grid(self, grid: Sequence[int]) -> tuple[int, int]:
        return conv_out_grid(self.conv_dw.conv, grid)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + self.drop_path(y) if self.has_skip else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        return self.forward_nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


@DOWNSAMPLES.register("inverted_residual")
class InvertedResidualDownsample(InvertedResidual):
    """An inverted residual in the role of a stage's downsampling layer: NCHW in and out, like ``Downsample``."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        stride: int = 2,
        expansion: float = 4.0,
        act: str = "silu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_dim, dim, stride, expansion, act, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.forward_nchw(x)


@BLOCKS.register("inverted_residual")
def inverted_residual_block(
    dim: int,
    in_dim: int,
    index: int,
    drop_path: float = 0.0,
    stride: int = 1,
    expansion: float = 4.0,
    act: str = "silu",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> InvertedResidual:
    """A block of a conv stage: the stage's first block (``index`` 0) does its ``stride`` and width change."""
    stride = stride if index == 0 else 1
    return InvertedResidual(in_dim, dim, stride, expansion, act, drop_path, device=device, dtype=dtype)


@register_channel_mixer("inverted_residual")
def inverted_residual_mlp(
    dim: int,
    ratio: float = 4.0,
    act: str = "silu",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> InvertedResidual:
    """An inverted residual (expansion ``ratio``, its own skip) in a block's MLP slot, as in AFFNet."""
    return InvertedResidual(dim, dim, 1, ratio, act, device=device, dtype=dtype)


def _check_width(block: str, in_dim: int, dim: int) -> None:
    if in_dim != dim:
        raise ValueError(
            f"A {block} block keeps its width, but its stage goes from {in_dim} to {dim} channels: give the stage a "
            "downsample spec (or start it with a block that changes width, e.g. inverted_residual)."
        )


def _scale(dim: int, init: float | None, **dd) -> nn.Module:
    return Scale(dim, init, **dd) if init is not None else nn.Identity()


@BLOCKS.register("metaformer")
class MetaFormerBlock(nn.Module):
    """Pre-norm token mixer + channel mixer (Yu et al., "MetaFormer Is Actually What You Need for Vision"):

        x = res_scale1 * x + layer_scale1 * drop_path(mixer(norm1(x)))
        x = res_scale2 * x + layer_scale2 * drop_path(mlp(norm2(x)))

    Each scale whose init is None is the identity. ``mixer`` and ``mlp`` are token- and channel-mixer specs;
    ``mlp=None`` makes a mixer-only block (no ``norm2``/``mlp``, Hydra-ViT); with ``mlp_every=n`` only every n-th
    block of a stage (``index`` from 0) has the channel sub-layer (ViM2: 2). ``grid``/``img_size`` reach the mixers
    that ask for them.
    """

    def __init__(
        self,
        dim: int,
        mixer: Spec = "pooling",
        in_dim: int | None = None,
        index: int = 0,
        grid: tuple[int, int] | None = None,
        img_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
        norm: str | None = "groupnorm1",
        norm_eps: float = 1e-6,
        norm_bias: bool = False,
        mlp: Spec | None = "mlp",
        mlp_every: int = 1,
        layer_scale_init: float | None = None,
        res_scale_init: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_width("metaformer", dim if in_dim is None else in_dim, dim)
        dd = dict(device=device, dtype=dtype)
        context = dict(grid=grid, img_size=img_size, **dd)
        self.norm1 = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
        self.token_mixer = create_mixer(mixer, dim, context=context)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = _scale(dim, layer_scale_init, **dd)
        self.res_scale1 = _scale(dim, res_scale_init, **dd)
        self.norm2 = self.mlp = None
        if mlp is not None and (index + 1) % mlp_every == 0:
            self.norm2 = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
            self.mlp = create_channel_mixer(mlp, dim, context=context)
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
            self.layer_scale2 = _scale(dim, layer_scale_init, **dd)
            self.res_scale2 = _scale(dim, res_scale_init, **dd)

    @property
    def num_sublayers(self) -> int:
        """The number of residual sub-layers (1 for a mixer-only block)."""
        return 1 if self.mlp is None else 2

    def token_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))

    def channel_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x = self.token_sublayer(x)
        return x if self.mlp is None else self.channel_sublayer(x)

    def forward_averaged(self, outputs: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        """The block inside a weighted-averaging stage: each residual sub-layer reads the weighted average
        (``weighted_average``) of all earlier sub-layer outputs of the stage (``outputs``, the stage input first).
        Returns the block's new outputs (one per sub-layer)."""
        new = [self.token_sublayer(weighted_average(weights, outputs))]
        if self.mlp is not None:
            new.append(self.channel_sublayer(weighted_average(weights, outputs + new)))
        return new


def weighted_average(weights: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """``x_k = sum_i w_{k,i} y_i`` for sub-layer k = ``len(outputs) - 1`` (the packed rows of ``WeightedAverage``)."""
    k = len(outputs) - 1
    w = weights[k * (k + 1) // 2 : (k + 1) * (k + 2) // 2]  # (k + 1,)
    x = w[0] * outputs[0]
    for i in range(1, k + 1):
        x = x + w[i] * outputs[i]
    return x


@BLOCKS.register("aff")
class AFFBlock(nn.Module):
    """The AFFNet block (microsoft/TokenMixers ``AFFBlock``): the channel mixer first, one residual around both,

        x = x + drop_path(mixer(norm1(mlp(norm2(x)))))

    ``norm1`` belongs to the token mixer and ``norm2`` to the channel mixer, as in ``MetaFormerBlock`` (the
    official names are swapped; ``checkpoint_filter_fn`` converts). AFFNet's MLP is an inverted residual with its
    own skip and its mixer the ``aff`` filter with its inner skip.
    """

    def __init__(
        self,
        dim: int,
        mixer: Spec = "aff",
        in_dim: int | None = None,
        grid: tuple[int, int] | None = None,
        img_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
        norm: str | None = "groupnorm1",
        norm_eps: float = 1e-5,
        norm_bias: bool = True,
        mlp: Spec = "inverted_residual",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_width("aff", dim if in_dim is None else in_dim, dim)
        dd = dict(device=device, dtype=dtype)
        context = dict(grid=grid, img_size=img_size, **dd)
        self.norm1 = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
        self.token_mixer = create_mixer(mixer, dim, context=context)
        self.norm2 = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
        self.mlp = create_channel_mixer(mlp, dim, context=context)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        return x + self.drop_path(self.token_mixer(self.norm1(self.mlp(self.norm2(x)))))
