"""Adaptive frequency filter (AFF) token mixer of AFFNet (Huang et al., "Adaptive Frequency Filters As Efficient
Global Token Mixers", ICCV 2023, arXiv 2307.14008). Code followed: microsoft/TokenMixers, folder
"Adaptive Frequency Filters", ``affnet/modules/aff_block.py`` (``AFNO2D_channelfirst``).

    X = rfft2(u)                                 orthonormal 2-D FFT over the grid, (B, H, W//2+1, C) complex
    M = softshrink_λ( L2( act( L1(X) ) ) )       L1, L2: complex group-linear layers over the channels
    out = irfft2(M ⊙ X, s=(H, W))  [+ u]          the optional inner skip of the official filter

L1/L2 hold one complex ``b x b`` matrix (and complex bias) per channel group (``num_groups`` = 8, b = C / 8),
shared by every frequency bin, so the mask is an instance-adaptive, per-channel filter. By the convolution theorem
the output is a per-channel *circular* convolution of ``u`` with the kernel ``irfft2(M)`` (size H x W; the ortho
normalisations of the two transforms combine to the unnormalised pair). ``act`` (SiLU in the released configs;
the paper's figure says ReLU) acts on the real and imaginary parts separately; softshrink acts on both parts.

Implementation: channels-last throughout. Each complex group-linear layer is one batched real matmul over the
groups: per group, the interleaved ``[re_1, im_1, ..., re_b, im_b]`` vector times the ``2b x 2b`` real matrix
``[[A, B], [-B, A]]`` (interleaved) built from the weights ``A + iB``. The parameters keep the official names and
shapes (``w1``, ``w2``: (2, groups, b, b); ``b1``, ``b2``: (2, groups, b); index 0 real, 1 imaginary) and its
init (0.02 * randn, biases too). Params per mixer: C²/2 + 4C. Any grid size works (odd, non-square): nothing
depends on H or W.

Precision: the filter runs in float32 (float64 for float64 input) with autocast disabled, also under bf16/fp16
autocast (cuFFT half precision only takes power-of-two sizes; CPU FFTs reject half types), and returns the input
dtype.

Inner skip (``inner_skip``): the official filter returns ``out + u``; AFFNet's block adds its own residual around
the whole block, so there the identity path is nested. As a mixer in a MetaFormer block (``x + mixer(norm(x))``)
the inner skip would add a second copy of ``norm(x)`` to the residual stream, so it is off by default ("pure"
mixer); the AFFNet models turn it on. Deviation: activations with parameters (e.g. StarReLU) are rejected, because
the official filter uses two separate activation instances for the two parts and the zoo applies one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import create_act
from .ops import autocast_off
from .registry import register_mixer

__all__ = ["AFF", "complex_group_matrix"]


def complex_group_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The real form of complex group-linear weights: (2, G, b, b) [real, imag] -> (G, 2b, 2b) acting on
    interleaved ``[re_1, im_1, re_2, im_2, ...]`` row vectors (``y = x @ M``)."""
    a, b = weight[0], weight[1]  # (G, b_in, b_out)
    # M[g, i, p, o, q]: input (channel i, part p) -> output (channel o, part q)
    real_in = torch.stack([a, b], dim=-1)  # re_i -> (re_o: a, im_o: b)
    imag_in = torch.stack([-b, a], dim=-1)  # im_i -> (re_o: -b, im_o: a)
    m = torch.stack([real_in, imag_in], dim=2)  # (G, b, 2, b, 2)
    g, n = a.shape[0], a.shape[1]
    return m.reshape(g, 2 * n, 2 * a.shape[2])


@register_mixer("aff")
class AFF(nn.Module):
    def __init__(
        self,
        dim: int,
        num_groups: int = 8,
        sparsity_threshold: float = 0.01,
        act: str = "silu",
        inner_skip: bool = False,
        init_scale: float = 0.02,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_groups != 0:
            raise ValueError(f"aff: dim ({dim}) must be divisible by num_groups ({num_groups}).")
        self.dim = dim
        self.num_groups = num_groups
        self.block_size = b = dim // num_groups
        self.sparsity_threshold = sparsity_threshold
        self.inner_skip = inner_skip
        self.act = create_act(act, **dd)
        if any(True for _ in self.act.parameters()):
            raise ValueError(f"aff: the mask activation must have no parameters; got {act!r}.")
        self.w1 = nn.Parameter(init_scale * torch.randn(2, num_groups, b, b, **dd))
        self.b1 = nn.Parameter(init_scale * torch.randn(2, num_groups, b, **dd))
        self.w2 = nn.Parameter(init_scale * torch.randn(2, num_groups, b, b, **dd))
        self.b2 = nn.Parameter(init_scale * torch.randn(2, num_groups, b, **dd))

    def _group_linear(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """(G, N, 2b) interleaved complex vectors -> (G, N, 2b)."""
        matrix = complex_group_matrix(weight.to(z.dtype))  # (G, 2b, 2b)
        bias = bias.to(z.dtype).permute(1, 2, 0).reshape(self.num_groups, 1, 2 * self.block_size)  # (G, 1, 2b)
        return torch.baddbmm(bias, z, matrix)

    def mask(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The filter mask for a spectrum (B, H, Wf, C) complex -> (B, H, Wf, C) complex."""
        B, H, Wf, C = spectrum.shape
        G, b = self.num_groups, self.block_size
        # (B, H, Wf, C) complex -> (B*H*Wf, G, 2b) real, interleaved (re, im) per channel -> (G, N, 2b)
        z = torch.view_as_real(spectrum).reshape(B * H * Wf, G, 2 * b).transpose(0, 1)
        z = self.act(self._group_linear(z, self.w1, self.b1))
        z = self._group_linear(z, self.w2, self.b2)
        z = F.softshrink(z, self.sparsity_threshold)
        z = z.transpose(0, 1).reshape(B, H, Wf, C, 2)
        return torch.view_as_complex(z.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        if torch.jit.is_scripting():  # TorchScript takes only a constant device type here: CUDA, where it matters
            with torch.autocast(device_type="cuda", enabled=False):
                y = self._filter(x)
        else:
            with autocast_off(x.device.type):
                y = self._filter(x)
        return y

    def _filter(self, x: torch.Tensor) -> torch.Tensor:
        """The filter in float32 (float64 kept), returning x's dtype; the caller turns autocast off."""
        dtype = x.dtype
        H, W = x.shape[1], x.shape[2]
        u = x.to(torch.promote_types(dtype, torch.float32))
        spectrum = torch.fft.rfft2(u, dim=(1, 2), norm="ortho")  # (B, H, W//2+1, C) complex
        y = torch.fft.irfft2(self.mask(spectrum) * spectrum, s=(H, W), dim=(1, 2), norm="ortho")  # (B, H, W, C)
        if self.inner_skip:
            y = y + u
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, num_groups={self.num_groups}, sparsity_threshold={self.sparsity_threshold}, "
            f"inner_skip={self.inner_skip}"
        )
