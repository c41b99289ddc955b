"""Hydra: the bidirectional quasiseparable SSM mixer (Hwang, Lahoti, Puduppully, Dao, Gu, "Hydra: Bidirectional
State Space Models Through Generalized Matrix Mixers", NeurIPS 2024, arXiv 2407.09941). Code followed:
goombalab/hydra ``hydra/modules/hydra.py`` (the default, non-memory-efficient path). Registry name ``hydra``.

Per head h the layer is ``y = M x`` with a quasiseparable L x L matrix (Prop. 3.7: QS(X) = shift(SS(X)) +
flip(shift(SS(flip X))) + D X), with a_t = dt_t A_h:

    i > j:  M_ij = (C^f_{i-1} · B^f_j) exp(a^f_{j+1} + ... + a^f_{i-1}) dt^f_j        forward SSD, shifted
    i < j:  M_ij = (C^b_{i+1} · B^b_j) exp(a^b_{i+1} + ... + a^b_{j-1}) dt^b_j        backward SSD, shifted
    i = j:  M_ii = D_h + (W_D x_i)_h                                                  data-dependent diagonal

The layer around it (official order): ``[z | x, B_f, C_f, B_b, C_b | dt_f, dt_b] = in_proj(u)``; a non-causal
depthwise Conv1d (odd kernel ``d_conv``, "same" padding) + SiLU on ``x, B, C``; ``dt = softplus(dt + dt_bias)``
(the backward dt flipped first); A = -exp(A_log) (A_log = 0, so A = -1 at init) and dt_bias shared by both
directions; both SSD passes batched as ``[x; flip x]`` (2B sequences); shift-by-one of both outputs; the diagonal
term; gated RMSNorm with the norm *before* the gate, ``RMSNorm(y) w ⊙ SiLU(z)`` (Mamba-2's default is the other
order); ``out_proj``. Parameters keep the official names (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``,
``fc_D``, ``norm.weight``, ``out_proj``), so an official layer's state dict loads as it is.

Tokens: ``(B, H, W, C)`` is read row-major (a reshape, no copy) as a sequence of L = H W tokens; any grid works. The 1-D
conv therefore mixes horizontal neighbours and wraps across row ends, as in the paper's ViT ("Hydra simply flattens
images"). The quasiseparable product (``mixers.ops.ssd.quasiseparable``) runs in float32 under autocast: in PyTorch one
dense L x L product per head up to 256 tokens (the 14 x 14 grid of a ViT) and two chunked SSD passes beyond, the fused
mamba_ssm kernel on CUDA when installed. The conv + SiLU is ``ssm_layers.conv1d_silu``. Options keep the official names
but for ``head_dim`` (official ``headdim``; the zoo's name in every mixer). Deviations: no ``dt_limit`` clamping (the
official default is none) and no ``seq_idx``; the gated norm is plain PyTorch in float32, as mamba_ssm's
``rms_norm_ref``; a layer with ``expand * dim < head_dim`` gets one head of width ``expand * dim`` (the official code
asserts it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import compute_dtype
from .ops.ssd import quasiseparable
from .registry import register_mixer
from .ssm_layers import GatedRMSNorm, conv1d_silu, init_dt_bias, inner_heads, same_conv1d

__all__ = ["Hydra"]


@register_mixer("hydra")
class Hydra(nn.Module):
    """The Hydra layer as a ``(B, H, W, C) -> (B, H, W, C)`` token mixer (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        d_conv: int = 7,
        expand: float = 2,
        head_dim: int = 64,
        ngroups: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        conv_init: float | None = None,
        bias: bool = False,
        conv_bias: bool = True,
        learnable_init_states: bool = False,
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_inner, self.head_dim, self.num_heads = inner_heads("hydra", dim, expand, head_dim)
        if self.num_heads % ngroups != 0:
            raise ValueError(f"hydra: the number of heads ({self.num_heads}) must be divisible by ngroups ({ngroups}).")
        self.dim, self.d_state, self.ngroups = dim, d_state, ngroups
        self.chunk_size, self.backend = chunk_size, backend
        d_inner, h, bc = self.d_inner, self.num_heads, 2 * ngroups * d_state  # bc: B and C of one direction
        # order: [z (d_inner) | x (d_inner), B_f, C_f, B_b, C_b (g n each) | dt_f, dt_b (num_heads each)]
        self.in_proj = nn.Linear(dim, 2 * d_inner + 2 * bc + 2 * h, bias=bias)
        self.conv1d = same_conv1d("hydra", d_inner + 2 * bc, d_conv, bias=conv_bias)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.init_states = nn.Parameter(torch.zeros(h, self.head_dim, d_state)) if learnable_init_states else None
        self.dt_bias = nn.Parameter(init_dt_bias(h, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.zeros(h))  # A = -exp(A_log) = -1 per head at init
        self.D = nn.Parameter(torch.ones(h))
        self.fc_D = nn.Linear(d_inner, h, bias=False)
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, norm_before_gate=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"A_log", "D", "dt_bias"} | ({"init_states"} if self.init_states is not None else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        batch, H, W, _ = x.shape
        h, gn = self.num_heads, self.ngroups * self.d_state
        u = x.reshape(batch, H * W, self.dim)  # row-major tokens
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 4 * gn, 2 * h], dim=-1)
        fp32 = compute_dtype(dt.dtype)  # decays in float32 (float64 stays)
        dt = F.softplus(dt.to(fp32).unflatten(-1, (2, h)) + self.dt_bias.to(fp32))  # (B, L, 2, h): dt_f, dt_b
        A = -torch.exp(self.A_log.to(fp32))  # (h,)
        xbc = conv1d_silu(xbc, self.conv1d)  # non-causal depthwise conv + SiLU, (B, L, .)
        xs, B_f, C_f, B_b, C_b = xbc.split([self.d_inner, gn, gn, gn, gn], dim=-1)
        B_f, C_f, B_b, C_b = (t.unflatten(-1, (self.ngroups, self.d_state)) for t in (B_f, C_f, B_b, C_b))
        diag = F.linear(xs, self.fc_D.weight, self.D)  # (B, L, h): δ = D + W_D x
        init = None if self.init_states is None else self.init_states.expand(2 * batch, -1, -1, -1)
        xs = xs.unflatten(-1, (h, self.head_dim))
        y = quasiseparable(xs, dt.unbind(2), A, (B_f, B_b), (C_f, C_b), diag, self.chunk_size, init, self.backend)
        y = self.norm(y.flatten(2), z)  # (B, L, d_inner)
        return self.out_proj(y).reshape(batch, H, W, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, num_heads={self.num_heads}, "
            f"head_dim={self.head_dim}, ngroups={self.ngroups}, backend={self.backend!r}"
        )
