"""Stage- and model-level extras the builder's ``extras`` specs name (registry ``EXTRAS``, ``models/registry.py``).

| name | attaches to | module |
|---|---|---|
| ``fusion`` | a stage's ``fusion`` | ``StageFusion``: MobileViT/AFFNet fusion of blocks' output and stage input |
| ``weighted_average`` | a stage's ``averaging`` | ``WeightedAverage``: MambaMixer's weighted averaging of sub-layers |
| ``cross_stage_shortcuts`` | the model's ``cross_shortcuts`` | ``CrossStageShortcuts`` (Strip-MLP) |
| ``final_conv`` | the model's ``final_conv`` | ``FinalConv``: 1x1 conv-BN-act after the last stage (AFFNet) |

A stage-level extra spec may name its ``stages`` (default: all).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import create_norm
from .blocks import ConvNormAct, weighted_average
from .registry import EXTRAS

__all__ = ["CrossStageShortcuts", "FinalConv", "StageFusion", "WeightedAverage"]


@EXTRAS.register("fusion")
class StageFusion(nn.Module):
    """End of a stage whose blocks refine a shortcut taken after its downsampling (MobileViT's fusion, in AFFNet's
    1x1 form): norm -> 1x1 conv-BN ("proj") -> concat with the shortcut -> 1x1 conv-BN-act ("fuse", 2C -> C).

        out = fuse([shortcut, proj(norm(x))])

    Channels-last ``(B, H, W, C)`` in (both) and out.
    """

    attach = "fusion"

    def __init__(
        self,
        dim: int,
        norm: str | None = "groupnorm1",
        norm_eps: float = 1e-5,
        norm_bias: bool = True,
        act: str = "silu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm = create_norm(norm, dim, eps=norm_eps, bias=norm_bias, **dd)
        self.proj = ConvNormAct(dim, dim, 1, act=None, **dd)
        self.fuse = ConvNormAct(2 * dim, dim, 1, act=act, **dd)

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = torch.cat([shortcut, x], dim=-1)  # (B, H, W, 2C)
        return self.fuse(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H, W, C)


@EXTRAS.register("cross_stage_shortcuts")
class CrossStageShortcuts(nn.Module):
    """Shortcuts that carry a stage's input (after its downsampling) to the inputs of all later stages, as in
    Strip-MLP (Med-Process/Strip_MLP ``conv_s1_28``, ``conv_s1_14``, ``conv_s2_14``).

    From each source stage s, a chain of grouped strided convs (no bias, ``groups`` = input width, so each input
    channel feeds ``dims[k+1] / dims[k]`` outputs; kernel/stride/padding of the downsampling layers) maps the
    stage-s input to the grid and width of stage s+1, that result to stage s+2, and so on; every link's output
    is added to the input of its stage. ``chains[str(s)][k]`` maps to stage ``s + 1 + k``. NCHW tensors.
    """

    attach = "cross_shortcuts"

    def __init__(
        self,
        dims: Sequence[int],
        sources: Sequence[int],
        kernel_size: int = 2,
        stride: int = 2,
        padding: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
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
                link = nn.Conv2d(dims[k], dims[k + 1], kernel_size, stride, padding, groups=dims[k], bias=False, **dd)
                links.append(link)
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


@EXTRAS.register("weighted_average")
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

    attach = "averaging"

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        num_sublayers = sum(block.num_sublayers for block in blocks)
        self.num_sublayers = num_sublayers
        init = torch.zeros(num_sublayers * (num_sublayers + 1) // 2, device=device, dtype=dtype)
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


@EXTRAS.register("final_conv")
class FinalConv(ConvNormAct):
    """A 1x1 conv-BN-act from the last stage's width to ``out_dim`` (AFFNet's ``conv_1x1_exp``), part of
    ``forward_features``; NCHW in and out."""

    attach = "final_conv"

    def __init__(
        self,
        dim: int,
        out_dim: int,
        act: str = "silu",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, out_dim, act=act, device=device, dtype=dtype)
        self.out_dim = out_dim
