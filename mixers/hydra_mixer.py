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
mamba_ssm kernel on CUDA when installed. The conv + SiLU is ``ssm_layers.conv1d_silu``. A TorchScript-scripted layer
runs the plain-PyTorch forms instead (the conv module, and the materialised matrix ``ops.ssd.quasiseparable_matrix``
times x, O(L²) like the dense path; the scans' custom autograd functions and kernels do not script), without
``learnable_init_states``. Options keep the official names but for ``head_dim`` (official ``headdim``; the zoo's name in
every mixer).

Deviations:

- no ``dt_limit`` clamping (the official default is none) and no ``seq_idx``;
- the gated norm is plain PyTorch in float32, as mamba_ssm's ``rms_norm_ref``;
- a layer with ``expand * dim < head_dim`` gets one head of width ``expand * dim`` (the official code asserts it);
- ``A = -exp(A_log)`` is computed in the scan's dtype: float32 in float32 and bf16 layers, as the official code, but
  float64 in a float64 layer, where the official code rounds it to float32 (``A_log.float()``). A float64 layer thus
  differs from an official float64 layer by about 2-4e-7, and equals the independent formulations of the tests to
  about 1e-14 (what float64 runs are for; rounding A would cost that). Kept on purpose.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ops import compute_dtype
from .ops.ssd import quasiseparable, quasiseparable_matrix
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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.d_inner, self.head_dim, self.num_heads = inner_heads("hydra", dim, expand, head_dim)
        if self.num_heads % ngroups != 0:
            raise ValueError(f"hydra: the number of heads ({self.num_heads}) must be divisible by ngroups ({ngroups}).")
        self.dim, self.d_state, self.ngroups = dim, d_state, ngroups
        self.chunk_size, self.backend = chunk_size, backend
        d_inner, h, bc = self.d_inner, self.num_heads, 2 * ngroups * d_state  # bc: B and C of one direction
        # order: [z (d_inner) | x (d_inner), B_f, C_f, B_b, C_b (g n each) | dt_f, dt_b (num_heads each)]
        self.in_proj = nn.Linear(dim, 2 * d_inner + 2 * bc + 2 * h, bias=bias, **dd)
        self.conv1d = same_conv1d("hydra", d_inner + 2 * bc, d_conv, bias=conv_bias, **dd)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.init_states = None
        if learnable_init_states:
            self.init_states = nn.Parameter(torch.zeros(h, self.head_dim, d_state, **dd))
        self.dt_bias = nn.Parameter(init_dt_bias(h, dt_min, dt_max, dt_init_floor, **dd))
        self.A_log = nn.Parameter(torch.zeros(h, **dd))  # A = -exp(A_log) = -1 per head at init
        self.D = nn.Parameter(torch.ones(h, **dd))
        self.fc_D = nn.Linear(d_inner, h, bias=False, **dd)
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, norm_before_gate=True, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias, **dd)

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
        if torch.jit.is_scripting():  # the conv module itself (conv1d_silu's custom backward does not script)
            xbc = F.silu(self.conv1d(xbc.transpose(1, 2))).transpose(1, 2)
        else:
            xbc = conv1d_silu(xbc, self.conv1d)  # non-causal depthwise conv + SiLU, (B, L, .)
        xs, bc = xbc.split([self.d_inner, 4 * gn], dim=-1)
        B_f, C_f, B_b, C_b = bc.unflatten(-1, (4, self.ngroups, self.d_state)).unbind(2)  # (B, L, g, n) each
        diag = F.linear(xs, self.fc_D.weight, self.D)  # (B, L, h): δ = D + W_D x
        xs = xs.unflatten(-1, (h, self.head_dim))
        dt_f, dt_b = dt.unbind(2)
        if torch.jit.is_scripting():
            y = self._materialised(xs, (dt_f, dt_b), A, (B_f, B_b), (C_f, C_b), diag)
        else:
            init = None if self.init_states is None else self.init_states.expand(2 * batch, -1, -1, -1)
            y = quasiseparable(xs, (dt_f, dt_b), A, (B_f, B_b), (C_f, C_b), diag, self.chunk_size, init, self.backend)
        y = self.norm(y.flatten(2), z)  # (B, L, d_inner)
        return self.out_proj(y).reshape(batch, H, W, self.dim)

    def _materialised(
        self,
        xs: torch.Tensor,
        dt: tuple[torch.Tensor, torch.Tensor],
        A: torch.Tensor,
        B: tuple[torch.Tensor, torch.Tensor],
        C: tuple[torch.Tensor, torch.Tensor],
        diag: torch.Tensor,
    ) -> torch.Tensor:
        """TorchScript's path: the materialised matrix (``ops.ssd.quasiseparable_matrix``, (B, h, L, L)) times x, in
        the scan's compute dtype; the scans' custom autograd functions and fused kernels do not script."""
        if self.init_states is not None:
            raise RuntimeError(
                "hydra: a scripted layer runs the materialised matrix, which has no initial states; script a layer "
                "built with learnable_init_states=False, or use torch.compile / torch.export."
            )
        fp32 = A.dtype
        M = quasiseparable_matrix(dt, A, (B[0].to(fp32), B[1].to(fp32)), (C[0].to(fp32), C[1].to(fp32)), diag.to(fp32))
        return torch.einsum("bhij,bjhp->bihp", M, xs.to(fp32)).to(xs.dtype)  # (B, L, h, head_dim)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, num_heads={self.num_heads}, "
            f"head_dim={self.head_dim}, ngroups={self.ngroups}, backend={self.backend!r}"
        )
