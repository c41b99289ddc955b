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

Tokens: ``(B, H, W, C)`` is read row-major (a reshape, no copy) as a sequence of L = H W tokens; any grid works.
The 1-D conv therefore mixes horizontal neighbours and wraps across row ends, as in the paper's ViT ("Hydra simply
flattens images"). The SSD runs in float32 under autocast (``mixers.ops.ssd``: chunked PyTorch on CPU, the fused
mamba_ssm kernel on CUDA when installed). Deviations: no ``dt_limit`` clamping (the official default is none) and
no ``seq_idx``; the gated norm is plain PyTorch in float32, as mamba_ssm's ``rms_norm_ref``; a layer with
``expand * dim < headdim`` gets one head of width ``expand * dim`` (the official code asserts divisibility).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops.ssd import ssd
from .registry import register_mixer

__all__ = ["GatedRMSNorm", "Hydra", "init_dt_bias", "quasiseparable_mix"]


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y) * weight * SiLU(z)`` (norm before gate) or ``RMSNorm(y * SiLU(z)) * weight``, over the last
    dim, computed in float32 (mamba_ssm ``rms_norm_ref`` semantics without groups)."""

    def __init__(self, dim: int, eps: float = 1e-5, norm_before_gate: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = y.dtype
        compute = torch.promote_types(dtype, torch.float32)
        y, z = y.to(compute), z.to(compute)
        if not self.norm_before_gate:
            y = y * F.silu(z)
        y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + self.eps) * self.weight.to(compute)
        if self.norm_before_gate:
            y = y * F.silu(z)
        return y.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, norm_before_gate={self.norm_before_gate}"


def init_dt_bias(nheads: int, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba-2's dt bias: the inverse softplus of dt ~ exp(U[log dt_min, log dt_max]), floored at dt_init_floor."""
    dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def quasiseparable_mix(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    diag: torch.Tensor,
    chunk_size: int | None = None,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Hydra's matrix-vector product by two SSD passes (Prop. 3.7).

    x (b, l, h, p); dt, B, C stacked over directions along the batch: dt (2b, l, h), B, C (2b, l, g, n), the
    backward halves already in flipped (right-to-left) order; A (h,); diag (b, l, h), the diagonal δ; optional
    initial_state (2b, h, p, n). Returns (b, l, h, p).
    """
    batch = x.shape[0]
    y = ssd(torch.cat([x, x.flip(1)]), dt, A, B, C, chunk_size, initial_state, backend=backend)  # (2b, l, h, p)
    y = F.pad(y[:, :-1], (0, 0, 0, 0, 1, 0))  # shift by one token, zero first row: roll(y, 1); y[:, 0] = 0
    return y[:batch] + y[batch:].flip(1) + x * diag[..., None]


@register_mixer("hydra")
class Hydra(nn.Module):
    """The Hydra layer as a ``(B, H, W, C) -> (B, H, W, C)`` token mixer (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        d_conv: int = 7,
        expand: int = 2,
        headdim: int = 64,
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
        d_inner = expand * dim
        headdim = min(headdim, d_inner)  # a layer narrower than one head has one head of width d_inner
        if d_inner % headdim != 0:
            raise ValueError(f"hydra: expand * dim ({d_inner}) must be divisible by headdim ({headdim}).")
        if d_conv % 2 != 1:
            raise ValueError(f"hydra: d_conv must be odd for a same-length non-causal conv, got {d_conv}.")
        self.dim, self.d_inner, self.d_state, self.headdim, self.ngroups = dim, d_inner, d_state, headdim, ngroups
        self.nheads = nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"hydra: the number of heads ({nheads}) must be divisible by ngroups ({ngroups}).")
        self.chunk_size, self.backend = chunk_size, backend
        bc = 2 * ngroups * d_state  # B and C of one direction
        # order: [z (d_inner) | x (d_inner), B_f, C_f, B_b, C_b (g n each) | dt_f, dt_b (nheads each)]
        self.in_proj = nn.Linear(dim, 2 * d_inner + 2 * bc + 2 * nheads, bias=bias)
        conv_dim = d_inner + 2 * bc
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, padding=d_conv // 2, groups=conv_dim, bias=conv_bias)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.init_states = nn.Parameter(torch.zeros(nheads, headdim, d_state)) if learnable_init_states else None
        self.dt_bias = nn.Parameter(init_dt_bias(nheads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.zeros(nheads))  # A = -exp(A_log) = -1 per head at init
        self.D = nn.Parameter(torch.ones(nheads))
        self.fc_D = nn.Linear(d_inner, nheads, bias=False)
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, norm_before_gate=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"A_log", "D", "dt_bias"} | ({"init_states"} if self.init_states is not None else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        batch, H, W, _ = x.shape
        L, h, p, gn = H * W, self.nheads, self.headdim, self.ngroups * self.d_state
        u = x.reshape(batch, L, self.dim)  # row-major tokens
        z, xbc, dt = self.in_proj(u).split([self.d_inner, self.d_inner + 4 * gn, 2 * h], dim=-1)
        dt = torch.cat([dt[..., :h], dt[..., h:].flip(1)])  # (2B, L, h): backward dt in scan order
        fp32 = torch.promote_types(dt.dtype, torch.float32)  # decays in float32 (float64 stays)
        dt = F.softplus(dt.to(fp32) + self.dt_bias.to(fp32))
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2)).transpose(1, 2))  # non-causal depthwise conv, (B, L, .)
        xs, B_f, C_f, B_b, C_b = xbc.split([self.d_inner, gn, gn, gn, gn], dim=-1)
        B = torch.cat([B_f, B_b.flip(1)]).unflatten(-1, (self.ngroups, self.d_state))  # (2B, L, g, n)
        C = torch.cat([C_f, C_b.flip(1)]).unflatten(-1, (self.ngroups, self.d_state))
        A = -torch.exp(self.A_log.to(fp32))  # (h,)
        diag = F.linear(xs, self.fc_D.weight, self.D)  # (B, L, h): δ = D + W_D x
        init = None if self.init_states is None else self.init_states.expand(2 * batch, h, p, self.d_state)
        y = quasiseparable_mix(xs.unflatten(-1, (h, p)), dt, A, B, C, diag, self.chunk_size, init, self.backend)
        y = self.norm(y.flatten(2), z)  # (B, L, d_inner)
        return self.out_proj(y).reshape(batch, H, W, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, nheads={self.nheads}, "
            f"headdim={self.headdim}, ngroups={self.ngroups}, backend={self.backend!r}"
        )
