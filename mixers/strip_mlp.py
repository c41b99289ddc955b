"""Strip Mixing Block of Strip-MLP (Cao et al., "Strip-MLP: Efficient Token Interaction for Vision MLP",
ICCV 2023, arXiv 2307.11458). Code followed: Med-Process/Strip_MLP, ``models/strip_mlp.py`` (``TokenMixing``,
``StripMLP_Block``, ``RelativePosition``).

Strip MLP layer (``StripMLPLayer``). The C' channels are split into P channel patches of G channels,
c = p G + g. A *row* layer mixes each row densely (W x W) and reads the row and its two neighbours (3 taps,
zero-padded), with one matrix per channel-in-patch g and tap t, shared by the P patches:

    Y[h, w', p, g] = b[g, w'] + sum_{t in -1,0,1} sum_w A[g, t, w', w] X[h + t, w, p, g]

A *column* layer is the same with H and W swapped (H x H matrices, taps over columns w-1, w, w+1). Params:
3 G L² + G L for strip length L. P = 2 if the block width C is divisible by 80, else 4 (official rule).

Cascade Group Strip Mixing Module (``CGSMM``) on X₁ (the first half of the channels):

    R = Row(X₁ + Pos_h);  Z = GELU(BN(FC_h([R, X₁]))) + Pos_w;  U = Col(Z);  out = FC_w([X₁, U])

with Pos[i, j] = T[clip(j - i, ±M) + M] relative-position embeddings (tables of (2M+1) x C', M = H for Pos_h and
W for Pos_w) and FC_h, FC_w 1x1 layers without bias (2C' -> C'). Local Strip Mixing Module (``LSMM``) on X₂:

    a = DW_3x7(X₂);  b = DW_7x3(X₂);  s = GAP(a + b + X₂);  (w₀, w₁, w₂) = softmax_3(FC(GELU(FC(s))))
    out = w₀ b + w₁ a + w₂ X₂                     (per channel)

Strip Mixing Block (the token mixer; the MetaFormer block adds the residual, no pre-norm):

    h = DW_3x3(GELU(BN(x)));  h = GELU(BN(FC(h)));  out = FC([CGSMM(h[:C/2]), LSMM(h[C/2:])])

Shapes: ``(B, H, W, C)`` in and out (channels-last); the convs run on the NCHW view of that memory.

Grid: the strip weights fix the grid. The mixer is built for the stage grid the builder passes (``grid``) and
raises for any other grid. Unlike the official code (``assert H == W``), non-square grids work: the row layer
is W x W and the column layer H x H.

``resize`` (beyond the paper, off by default): at a grid other than the built one, the strip matrices are
bilinearly interpolated to the new size (as images over (output, input) position, times L / L' so a row that
averages keeps averaging) and the biases linearly; the relative-position tables are used as they are (their
distances are clipped). At the built grid nothing is interpolated, so the output equals the plain mixer's
exactly; at other grids the model runs and can be fine-tuned (gradients reach the stored weights). This is the
weight-interpolation route of RaftMLP (Tatsunami and Taki) for its token MLPs.

Deviations: the relative-position index is built on the tables' device (the official code rebuilds it from a
CPU ``torch.LongTensor`` every call); everything else, including parameter names and shapes (1x1 convs as
``nn.Linear``), follows the official block, whose checkpoints load through ``models.load_checkpoint``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_

from .grid import built_for, check_grid
from .registry import register_mixer

torch.fx.wrap("check_grid")
torch.fx.wrap("strip_weights")

__all__ = ["CGSMM", "LSMM", "RelativePosition", "StripMLP", "StripMLPLayer", "num_strip_patches"]

STRIP_AXES = ("row", "column")
ADVICE = (
    "Its strip MLP weights only fit that grid: feed images of the size the model was built for, build the model "
    "with img_size set to your input size, or build the mixer with resize=True to interpolate the strip weights "
    "to other grids."
)


def num_strip_patches(dim: int) -> int:
    """The official channel-patch count for a block of ``dim`` channels: 2 if ``dim % 80 == 0``, else 4."""
    return 2 if dim % 80 == 0 else 4


@register_notrace_function
def strip_weights(
    weight: torch.Tensor, bias: torch.Tensor, group_dim: int, length: int, resize: bool, axis: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv1d weight (G L', L', 3) and bias (G L',) of a strip layer (``weight`` (G L, L, 1, 3), ``bias`` (G L,))
    for strips of ``length`` L' tokens: the stored ones if L' = L, else bilinearly interpolated (``resize``) or an
    error. An FX leaf (it compares the length at run time)."""
    L = weight.shape[1]
    if length == L:
        return weight[:, :, 0], bias
    if not resize:
        raise ValueError(f"strip_mlp: this {axis} layer mixes strips of {L} tokens, got {length}.")
    G = group_dim
    image = weight[:, :, 0].reshape(G, L, L, 3).permute(0, 3, 1, 2)  # (G, 3, L_out, L_in)
    image = F.interpolate(image, size=(length, length), mode="bilinear", align_corners=False) * (L / length)
    new_bias = F.interpolate(bias.reshape(G, 1, L), size=length, mode="linear", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(G * length, length, 3), new_bias.reshape(G * length)


class StripMLPLayer(nn.Module):
    """Row (``axis="row"``: W x W mixing along each row, taps over rows) or column (H x H along each column, taps
    over columns) Strip MLP layer on ``(B, H, W, C)``.

    Parameters keep the official grouped-conv layout: ``weight`` (G L, L, 1, 3) with
    ``weight[g L + l_out, l_in, 0, t] = A[g, t, l_out, l_in]`` and ``bias`` (G L,), L = ``length``.
    """

    def __init__(
        self,
        dim: int,
        length: int,
        num_patches: int,
        axis: str = "row",
        resize: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if axis not in STRIP_AXES:
            raise ValueError(f"Unknown strip axis {axis!r}; use one of {STRIP_AXES}.")
        if dim % num_patches != 0:
            raise ValueError(f"strip_mlp: {dim} channels do not split into {num_patches} channel patches.")
        self.dim, self.length, self.num_patches, self.axis, self.resize = dim, length, num_patches, axis, resize
        self.group_dim = G = dim // num_patches
        bound = 1.0 / math.sqrt(3 * length)  # nn.Conv2d's default init (fan-in 3 L), as in the official layer
        self.weight = nn.Parameter(torch.empty(G * length, length, 1, 3, **dd).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(G * length, **dd).uniform_(-bound, bound))

    def weights_for(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv1d weight (G L', L', 3) and bias (G L',) for strips of ``length`` L' (interpolated if resizing)."""
        return strip_weights(self.weight, self.bias, self.group_dim, length, self.resize, self.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        B, H, W, C = x.shape
        P, G = self.num_patches, self.group_dim
        x = x.reshape(B, H, W, P, G)
        if self.axis == "row":  # strips along W, taps along H: (B P, G W, H)
            length, taps = W, H
            x = x.permute(0, 3, 4, 2, 1)
        else:  # strips along H, taps along W: (B P, G H, W)
            length, taps = H, W
            x = x.permute(0, 3, 4, 1, 2)
        weight, bias = self.weights_for(length)
        y = F.conv1d(x.reshape(B * P, G * length, taps), weight.to(x.dtype), bias.to(x.dtype), padding=1, groups=G)
        y = y.reshape(B, P, G, length, taps)
        y = y.permute(0, 4, 3, 1, 2) if self.axis == "row" else y.permute(0, 3, 4, 1, 2)  # (B, H, W, P, G)
        return y.reshape(B, H, W, C)

    def extra_repr(self) -> str:
        return f"{self.dim}, length={self.length}, num_patches={self.num_patches}, axis={self.axis}"


class RelativePosition(nn.Module):
    """Toeplitz position embedding ``Pos[i, j] = table[clip(j - i, -M, M) + M]`` for row i, column j: (H, W, C)."""

    def __init__(
        self, dim: int, max_distance: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.max_distance = max_distance
        table = torch.empty(2 * max_distance + 1, dim, device=device, dtype=dtype)
        self.table = nn.Parameter(trunc_normal_(table, std=0.02))

    def forward(self, height: int, width: int) -> torch.Tensor:
        rows = torch.arange(height, device=self.table.device)
        cols = torch.arange(width, device=self.table.device)
        index = (cols[None, :] - rows[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
        # index_select on the flat index: 4-7x faster on CPU than advanced indexing with the (H, W) index
        return self.table.index_select(0, index.flatten()).reshape(height, width, -1)  # (H, W, C)


class CGSMM(nn.Module):
    """Cascade Group Strip Mixing Module: row strip MLP, 1x1 fusion with the input, BN-GELU, column strip MLP,
    1x1 fusion with the input; ``(B, H, W, C')`` in and out."""

    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        num_patches: int,
        resize: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        H, W = int(grid[0]), int(grid[1])
        self.pos_h = RelativePosition(dim, H, **dd)
        self.proj_h = StripMLPLayer(dim, W, num_patches, "row", resize, **dd)
        self.fuse_h = nn.Linear(2 * dim, dim, bias=False, **dd)
        self.norm = nn.BatchNorm2d(dim, **dd)
        self.pos_w = RelativePosition(dim, W, **dd)
        self.proj_w = StripMLPLayer(dim, H, num_patches, "column", resize, **dd)
        self.fuse_w = nn.Linear(2 * dim, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C')
        H, W = x.shape[1], x.shape[2]
        r = self.proj_h(x + self.pos_h(H, W).to(x.dtype))  # row mixing, (B, H, W, C')
        z = F.gelu(self.norm(self.fuse_h(torch.cat([r, x], dim=-1)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        u = self.proj_w(z + self.pos_w(H, W).to(x.dtype))  # column mixing
        return self.fuse_w(torch.cat([x, u], dim=-1))


class StripReweight(nn.Module):
    """The LSMM's branch weights: fc1 (C' -> C'/2) -> GELU -> fc2 (C'/2 -> 3 C'), on pooled ``(B, C')``."""

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim // 2, device=device, dtype=dtype)
        self.fc2 = nn.Linear(dim // 2, 3 * dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class LSMM(nn.Module):
    """Local Strip Mixing Module: depthwise 3x7 and 7x3 "small strips" and the identity, mixed per channel by a
    softmax over the three (ViP-style re-weighting); ``(B, H, W, C')`` in and out."""

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc_h = nn.Conv2d(dim, dim, (3, 7), padding=(1, 3), groups=dim, bias=False, **dd)
        self.fc_w = nn.Conv2d(dim, dim, (7, 3), padding=(3, 1), groups=dim, bias=False, **dd)
        self.reweight = StripReweight(dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C')
        B, C = x.shape[0], x.shape[-1]
        xc = x.permute(0, 3, 1, 2)  # NCHW view
        a = self.fc_h(xc).permute(0, 2, 3, 1)  # 3x7 strip, (B, H, W, C')
        b = self.fc_w(xc).permute(0, 2, 3, 1)  # 7x3 strip
        weights = self.reweight((a + b + x).mean(dim=(1, 2))).reshape(B, 1, 1, C, 3).softmax(dim=-1)
        return b * weights[..., 0] + a * weights[..., 1] + x * weights[..., 2]


@register_mixer("strip_mlp")
class StripMLP(nn.Module):
    """The Strip Mixing Block (see the module docstring). ``num_patches``: the channel-patch count P (default:
    the official rule, 2 if ``dim % 80 == 0`` else 4); ``resize``: accept other grids by interpolating the strip
    weights (off by default)."""

    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        img_size: Sequence[int] | None = None,
        num_patches: int | None = None,
        resize: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % 2 != 0:
            raise ValueError(f"strip_mlp: dim must be even (half the channels go to each module), got {dim}.")
        self.dim = dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.img_size = tuple(img_size) if img_size is not None else None
        self.built_for, self.advice = built_for(self.img_size), ADVICE  # for the grid check's error
        self.num_patches = num_patches or num_strip_patches(dim)
        self.resize = resize
        half = dim // 2
        if half % self.num_patches != 0:
            raise ValueError(
                f"strip_mlp: dim/2 = {half} is not divisible by num_patches = {self.num_patches} "
                "(the official rule gives 2 patches if dim % 80 == 0, else 4; set num_patches explicitly)."
            )
        self.dwsc_norm = nn.BatchNorm2d(dim, **dd)
        self.dwsc_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_norm = nn.BatchNorm2d(dim, **dd)
        self.cgsmm = CGSMM(half, self.grid, self.num_patches, resize, **dd)
        self.lsmm = LSMM(half, **dd)
        self.fuse = nn.Linear(dim, dim, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        if not self.resize:
            x = check_grid(x, self.grid, "strip_mlp", self.built_for, self.advice)
        h = self.dwsc_conv(F.gelu(self.dwsc_norm(x.permute(0, 3, 1, 2))))  # DWSC: BN -> GELU -> dw 3x3 (NCHW)
        h = F.gelu(self.proj_norm(self.proj(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)))  # BN on the NCHW view
        h = h.permute(0, 2, 3, 1)  # (B, H, W, C)
        half = self.dim // 2
        return self.fuse(torch.cat([self.cgsmm(h[..., :half]), self.lsmm(h[..., half:])], dim=-1))

    def extra_repr(self) -> str:
        return f"{self.dim}, grid={self.grid}, num_patches={self.num_patches}, resize={self.resize}"
