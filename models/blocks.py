"""Convolutional building blocks of the backbone builder: the stem and downsampling layers (NCHW in and out), and
the pieces of MobileNetV2-style stages and MobileViT/AFFNet-style stage fusion. Their BatchNorms sit in NCHW convs;
the blocks' public ``forward`` takes and returns channels-last ``(B, H, W, C)`` like the MetaFormer blocks, and
works on the NCHW *view* of that memory (channels_last format, no copies).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import DropPath, make_divisible

from ..mixers import create_act

__all__ = [
    "ConvNormAct",
    "CrossStageShortcuts",
    "Downsample",
    "InvertedResidual",
    "InvertedResidualDownsample",
    "StageFusion",
    "Stem",
    "WeightedAverage",
    "weighted_average",
]


class Stem(nn.Module):
    """Patch embedding: conv (NCHW) then an optional post-norm on channels and an optional activation."""

    def __init__(
        self,
        in_chans: int,
        dim: int,
        kernel_size: int,
        stride: int,
        padding: int,
        norm: nn.Module,
        bias: bool = True,
        act: nn.Module | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, kernel_size, stride=stride, padding=padding, bias=bias)
        self.norm = norm
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)  # (B, H/s, W/s, C)
        return self.act(self.norm(x)).permute(0, 3, 1, 2)  # NCHW view


class Downsample(nn.Module):
    """Optional pre-norm on channels, then a strided conv (with a bias unless ``bias=False``); NCHW in and out."""

    def __init__(
        self, in_dim: int, dim: int, kernel_size: int, stride: int, padding: int, norm: nn.Module, bias: bool = True
    ):
        super().__init__()
        self.norm = norm
        self.conv = nn.Conv2d(in_dim, dim, kernel_size, stride=stride, padding=padding, bias=bias)

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
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_dim, eps=bn_eps)
        self.act = create_act(act) if act is not None else nn.Identity()

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
    ) -> None:
        super().__init__()
        hidden = in_dim if expansion == 1 else make_divisible(round(in_dim * expansion), 8)
        self.conv_pw = ConvNormAct(in_dim, hidden, 1, act=act) if expansion != 1 else nn.Identity()
        self.conv_dw = ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, act=act)
        self.conv_pwl = ConvNormAct(hidden, out_dim, 1, act=None)
        self.has_skip = stride == 1 and in_dim == out_dim
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.has_skip else nn.Identity()

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_pwl(self.conv_dw(self.conv_pw(x)))
        return x + self.drop_path(y) if self.has_skip else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        return self.forward_nchw(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class InvertedResidualDownsample(InvertedResidual):
    """An inverted residual in the role of a stage's downsampling layer: NCHW in and out, like ``Downsample``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        return self.forward_nchw(x)


class StageFusion(nn.Module):
    """End of a stage whose blocks refine a shortcut taken after its downsampling (MobileViT's fusion, in AFFNet's
    1x1 form): norm -> 1x1 conv-BN ("proj") -> concat with the shortcut -> 1x1 conv-BN-act ("fuse", 2C -> C).

        out = fuse([shortcut, proj(norm(x))])

    Channels-last ``(B, H, W, C)`` in (both) and out.
    """

    def __init__(self, dim: int, norm: nn.Module, act: str = "silu") -> None:
        super().__init__()
        self.norm = norm
        self.proj = ConvNormAct(dim, dim, 1, act=None)
        self.fuse = ConvNormAct(2 * dim, dim, 1, act=act)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = torch.cat([shortcut, x], dim=-1)  # (B, H, W, 2C)
        return self.fuse(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, C)


class CrossStageShortcuts(nn.Module):
    """Shortcuts that carry a stage's input (after its downsampling) to the inputs of all later stages, as in
    Strip-MLP (Med-Process/Strip_MLP ``conv_s1_28``, ``conv_s1_14``, ``conv_s2_14``).

    From each source stage s, a chain of grouped strided convs (no bias, ``groups`` = input width, so each input
    channel feeds ``dims[k+1] / dims[k]`` outputs; kernel/stride/padding of the downsampling layers) maps the
    stage-s input to the grid and width of stage s+1, that result to stage s+2, and so on; every link's output
    is added to the input of its stage. ``chains[str(s)][k]`` maps to stage ``s + 1 + k``. NCHW tensors.
    """

    def __init__(
        self, sources: Sequence[int], dims: Sequence[int], kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__()
        self.chains = nn.ModuleDict()
        for s in sorted(set(int(i) for i in sources)):
            if not 0 <= s < len(dims) - 1:
                raise ValueError(
                    f"cross_stage_shortcuts: source stage {s} has no later stage (stages 0-{len(dims) - 1})."
                )
            links = []
            for k in range(s, len(dims) - 1):
                if dims[k + 1] % dims[k] != 0:
                    raise ValueError(
                        f"cross_stage_shortcuts: a grouped conv from width {dims[k]} to {dims[k + 1]} needs "
                        "the later width to be a multiple of the earlier one."
                    )
                links.append(nn.Conv2d(dims[k], dims[k + 1], kernel_size, stride, padding, groups=dims[k], bias=False))
            self.chains[str(s)] = nn.ModuleList(links)

    def carry(self, stage: int, x: torch.Tensor, num_stages: int) -> dict[int, torch.Tensor]:
        """The contributions of stage ``stage``'s input ``x`` to the inputs of the later stages (< ``num_stages``)."""
        out: dict[int, torch.Tensor] = {}
        for source, chain in self.chains.items():
            if int(source) == stage:
                target = stage
                for link in chain:
                    target += 1
                    if target < num_stages:
                        x = link(x)
                        out[target] = x
        return out

    def prune(self, num_stages: int) -> bool:
        """Keep only the links into the first ``num_stages`` stages; whether any link is left."""
        for source in list(self.chains):
            keep = num_stages - 1 - int(source)
            if keep > 0:
                self.chains[source] = self.chains[source][:keep]
            else:
                del self.chains[source]
        return len(self.chains) > 0


class WeightedAverage(nn.Module):
    """Dense learnable scalar averaging of all earlier outputs inside a stage (MambaMixer's weighted averaging,
    Behrouz et al. 2024, arXiv 2403.19888 v1 §3.2; DenseFormer's depth-weighted average, Pagliardini et al. 2024).

    With the stage input ``y_0`` and the outputs ``y_1..y_K`` of its K residual sub-layers in order (token mixer,
    channel mixer, token mixer, ...; each output includes its residual), sub-layer k reads

        x_k = sum_{i=0}^{k-1} w_{k,i} y_i,        y_k = sublayer_k(x_k),        stage output y_K.

    For alternating token/channel sub-layers this is the paper's α, β (token inputs) and θ, γ (channel inputs; the
    current token output included), with the two weights on the stage input (y_Token^(0) = y_Channel^(0) = x) folded
    into one. K(K+1)/2 scalars, initialised to w_{k,k-1} = 1 and 0 elsewhere: at init the stage computes exactly
    the plain residual network (the paper gives no init; this is DenseFormer's).
    """

    def __init__(self, num_sublayers: int) -> None:
        super().__init__()
        self.num_sublayers = num_sublayers
        init = torch.zeros(num_sublayers * (num_sublayers + 1) // 2)
        for k in range(num_sublayers):  # row k (inputs y_0..y_k of sub-layer k + 1) starts at k (k + 1) / 2
            init[k * (k + 1) // 2 + k] = 1.0
        self.weights = nn.Parameter(init)

    def no_weight_decay(self) -> set[str]:
        return {"weights"}

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """The input of the next sub-layer from the stage input and the sub-layer outputs so far."""
        if len(outputs) > self.num_sublayers:
            raise ValueError(f"WeightedAverage holds weights for {self.num_sublayers} sub-layers only.")
        return weighted_average(self.weights, outputs)

    def extra_repr(self) -> str:
        return f"num_sublayers={self.num_sublayers}"


def weighted_average(weights: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """``x_k = sum_i w_{k,i} y_i`` for sub-layer k = ``len(outputs) - 1`` (the packed rows of ``WeightedAverage``)."""
    k = len(outputs) - 1
    w = weights[k * (k + 1) // 2 : (k + 1) * (k + 2) // 2]  # (k + 1,)
    x = w[0] * outputs[0]
    for i in range(1, k + 1):
        x = x + w[i] * outputs[i]
    return x
