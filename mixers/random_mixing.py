"""Random token mixing of RandFormer (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024).

    W = softmax(U, dim=-1),  U ~ Uniform[0, 1)^(N x N),  N = H * W
    out[b, m, c] = sum_n W[m, n] x[b, n, c]          (tokens read row-major from the grid)

Every row of W is a convex combination (row-stochastic). W is frozen: it is stored as a persistent buffer
under the official key ``random_matrix``, so it is saved and loaded with the weights but is not a parameter
(no gradient, no optimizer state, nothing for DDP to wait on). The official code keeps it as an
``nn.Parameter(requires_grad=False)``; the state-dict key is the same, so official checkpoints load.

W depends on the number of tokens, so the mixer is built for one grid (the stage grid at the model's
``img_size``) and refuses any other grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
import torch.nn as nn

from .grid import built_for, check_grid
from .registry import register_mixer

torch.fx.wrap("check_grid")

__all__ = ["RandomMixing"]

ADVICE = (
    "Its frozen mixing matrix only fits that grid: feed images of the size the model was built for, or build the "
    "model with img_size set to your input size (that draws a new random matrix)."
)


@register_mixer("random")
class RandomMixing(nn.Module):
    def __init__(
        self,
        dim: int,
        grid: Sequence[int],
        img_size: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.img_size = tuple(img_size) if img_size is not None else None
        self.built_for, self.advice = built_for(self.img_size), ADVICE  # for the grid check's error
        num_tokens = self.grid[0] * self.grid[1]
        weights = torch.softmax(torch.rand(num_tokens, num_tokens, device=device), dim=-1)  # drawn in float32
        self.register_buffer("random_matrix", weights.to(dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_grid(x, self.grid, "random mixer", self.built_for, self.advice)
        B, H, W, C = x.shape
        tokens = x.reshape(B, H * W, C)  # (B, N, C), row-major
        mixed = torch.matmul(self.random_matrix.to(x.dtype), tokens)  # (N, N) @ (B, N, C) -> (B, N, C)
        return mixed.reshape(B, H, W, C)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"
