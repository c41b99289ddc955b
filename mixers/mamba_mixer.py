"""MambaMixer's selective token mixer and selective channel mixer for 2-D grids (Behrouz, Santacatterina, Zabih,
"MambaMixer: Efficient Selective State Space Models with Dual Token and Channel Selection", 2024, arXiv
2403.19888 v1, §3.2 and the ViM2 appendix). There is no official code (MambaMixer/M2 #1); the token mixer follows
VMamba's SS2D (MzeroMiko/VMamba, ``cross_scan_fwd`` scans=0, K = 4 direction copies of x_proj/dt_proj/A/D), which
the paper names as its cross-scan. Registry names ``mamba_mixer`` and ``mamba_channel_mixer``.

**Selective token mixer** (``mamba_mixer``), on x (B, H, W, C), inner width E = expand · C:

    [x̄ | z] = in_proj(x)                          (B, H, W, 2E)
    x̄ = SiLU(DWConv3x3(x̄))                        2-D depthwise conv on the grid
    s_k = scan_k(x̄),  k = 0..3                     row-major, column-major, reversed row-major, reversed column-major
    y_k = S6_k(s_k)  with  B_k, C_k, Δ_k = Linear_k(s_k), Δ_k = softplus(dt_proj_k(·) + dt_bias_k), A_k, D_k
    y = Σ_k merge_k(y_k)                            each merge_k the exact inverse of scan_k
    out = out_proj(LayerNorm(y) ⊙ SiLU(z))

The four S6 passes run as one scan of 4E channels with 4 B/C groups (the fused kernel's grouped layout).
Training keeps only the scan section's input x̄ and recomputes the rest in the backward (``recompute_in_backward``;
the same for the channel mixer's S6). A TorchScript-scripted mixer runs the sequential reference scan
(``ops.selective_scan.selective_scan_ref``, in float32: exact, one step per token, slow for long sequences) instead
of the dispatch, whose kernels do not script. Any grid works. [U] the LayerNorm before the gate is VMamba's
(``out_norm``; ``out_norm=False`` drops it).

**Selective channel mixer** (``mamba_channel_mixer``; the MLP slot of a block), with width E (ViM2 table:
2C in stages 1-3, C in stage 4) and channel groups of ``group_size`` g (S = E / g "channel tokens"):

    u = cw_in(x)                                    (B, H, W, E)   CW-Linear, C -> E, per token
    u = (B·H·W, S, g)                               each token's channels as a sequence of S groups of g features
    ū = SiLU(DWConv1d_k3(u))                        along the channel sequence
    y = S6_fwd(ū) + flip(S6_bwd(flip ū))            bidirectional selective scan across channels (own B/C/Δ/A/D)
    out = cw_out(y ⊙ SiLU(u))                       gate from the CW-Linear (MLP(xᵀ) of the paper), E -> C

Interpretation (the paper is ambiguous for images, spec §3.3): read literally, the channel S6 would take the L
tokens as features (a Mamba of width L on xᵀ), which fixes the resolution and costs ~2L² weights (~20 M at
L = 3136, the whole ViM2-T budget). We keep the paper's structure — "CW-Linear; CW-S6; CW-Linear", a
bidirectional S6 whose *sequence axis is the channels*, with input-dependent B/C/Δ that select channels, and a
gate — but apply it to each token separately (option (b) of the spec): the channel axis is split into S groups
of g features (g = 16 by default, the SSM's features per channel position), so the scan is per token and any
resolution works. The gate reuses the CW-Linear output (no second projection), so the parameters are
``C·E + E·C`` plus O(g²) for the S6: this keeps ViM2-T/S/B within 10% of the published 20/43/74 M (see
``models/vim2_family.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .ops import compute_dtype
from .ops.selective_scan import selective_scan, selective_scan_ref
from .registry import register_channel_mixer, register_mixer
from .ssm_layers import init_dt_bias, s4d_real_A_log

__all__ = ["MambaChannelMixer", "MambaMixer", "cross_merge", "cross_scan", "recompute_in_backward"]


def recompute_in_backward(scans, x: torch.Tensor) -> torch.Tensor:
    """``scans(x)`` keeping only x for the backward when training (activation checkpointing of the S6 section:
    the direction copies, Δ, B, C and the scan's chunk states are recomputed in the backward instead of kept, about
    half of a ViM2 block's activation memory for one more scan forward); plainly without gradients."""
    if torch.is_grad_enabled():
        return checkpoint(scans, x, use_reentrant=False)
    return scans(x)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(B, E, H, W) -> (B, 4, E, H W): row-major, column-major, and both reversed (VMamba's cross-scan)."""
    rows = x.flatten(2)  # (B, E, L), token index h W + w
    cols = x.transpose(2, 3).flatten(2)  # (B, E, L), token index w H + h
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(B, 4, E, H W) -> (B, E, H, W): each sequence put back onto the grid (the inverse of ``cross_scan``), summed."""
    rows = y[:, 0] + y[:, 2].flip(-1)  # (B, E, L) row-major
    cols = y[:, 1] + y[:, 3].flip(-1)  # (B, E, L) column-major
    return rows.unflatten(-1, (H, W)) + cols.unflatten(-1, (W, H)).transpose(2, 3)


class _S6Params(nn.Module):
    """K independent sets of S6 parameters for inner width E: x_proj (K, R + 2N, E), dt_proj (K, E, R), dt_bias,
    A_log (K, E, N), D (K, E); ``forward`` runs the K scans as one grouped selective scan."""

    def __init__(
        self,
        num: int,
        d_inner: int,
        d_state: int,
        dt_rank: int,
        dt_min: float,
        dt_max: float,
        dt_init_floor: float,
        dt_scale: float,
        backend: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num, self.d_inner, self.d_state, self.dt_rank, self.backend = num, d_inner, d_state, dt_rank, backend
        bound = d_inner**-0.5  # nn.Linear's default init, as Mamba/VMamba leave x_proj
        self.x_proj = nn.Parameter(torch.empty(num, dt_rank + 2 * d_state, d_inner, **dd).uniform_(-bound, bound))
        dt_std = dt_rank**-0.5 * dt_scale
        self.dt_proj = nn.Parameter(torch.empty(num, d_inner, dt_rank, **dd).uniform_(-dt_std, dt_std))
        self.dt_bias = nn.Parameter(init_dt_bias((num, d_inner), dt_min, dt_max, dt_init_floor, **dd))
        self.A_log = nn.Parameter(s4d_real_A_log((num, d_inner), d_state, **dd))
        self.D = nn.Parameter(torch.ones(num, d_inner, **dd))

    def no_weight_decay(self) -> set[str]:
        return {"A_log", "D", "dt_bias"}

    def scan_macs(self, xs: torch.Tensor) -> int:
        """Work of the scan that no matmul shows, for ``benchmark.py``: the state recurrence
        h_t = exp(dt A) h_{t-1} + dt B x_t is one multiply-add per (batch, channel, token, state). The readout
        C h_t is an einsum (counted as a matmul); the discretisation is elementwise (counted 0, like all
        elementwise work in the tables)."""
        b, K, E, L = xs.shape
        return b * K * E * L * self.d_state

    def forward(self, xs: torch.Tensor) -> torch.Tensor:  # (b, K, E, L)
        b, K, E, L = xs.shape
        x_dbl = torch.einsum("bkel,kce->bkcl", xs, self.x_proj)  # (b, K, R + 2N, L)
        dt, Bs, Cs = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dt = torch.einsum("bkrl,ker->bkel", dt, self.dt_proj)  # (b, K, E, L)
        A = -torch.exp(self.A_log.float())  # (K, E, N), float32
        u, dt, A = xs.reshape(b, K * E, L), dt.reshape(b, K * E, L), A.reshape(K * E, self.d_state)
        D, dt_bias = self.D.reshape(K * E), self.dt_bias.reshape(K * E)
        # Bs, Cs (b, K, N, L): group k serves channels k E .. (k + 1) E - 1
        if torch.jit.is_scripting():  # the sequential reference in float32 (the dispatch and kernels do not script)
            fp32 = compute_dtype(u.dtype)
            y = selective_scan_ref(
                u.to(fp32), dt.to(fp32), A, Bs.to(fp32), Cs.to(fp32), D.to(fp32), None, dt_bias.to(fp32), True
            ).to(u.dtype)
        else:
            y = selective_scan(u, dt, A, Bs, Cs, D=D, delta_bias=dt_bias, delta_softplus=True, backend=self.backend)
        return y.view(b, K, E, L)

    def extra_repr(self) -> str:
        return f"num={self.num}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}"


@register_mixer("mamba_mixer")
class MambaMixer(nn.Module):
    """MambaMixer's selective token mixer on a 2-D grid, ``(B, H, W, C) -> (B, H, W, C)`` (module docstring)."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        expand: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        conv_bias: bool = True,
        bias: bool = False,
        out_norm: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if d_conv % 2 != 1:
            raise ValueError(f"mamba_mixer: d_conv must be odd for a same-size 2-D conv, got {d_conv}.")
        self.dim, self.d_inner = dim, int(expand * dim)
        d_inner = self.d_inner
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias, **dd)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=d_conv // 2, groups=d_inner, bias=conv_bias, **dd)
        self.ssm = _S6Params(4, d_inner, d_state, self.dt_rank, dt_min, dt_max, dt_init_floor, dt_scale, backend, **dd)
        self.out_norm = nn.LayerNorm(d_inner, **dd) if out_norm else nn.Identity()
        self.out_proj = nn.Linear(d_inner, dim, bias=bias, **dd)

    def _scans(self, x: torch.Tensor) -> torch.Tensor:  # (B, E, H, W)
        return cross_merge(self.ssm(cross_scan(x)), H=x.shape[2], W=x.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        x, z = self.in_proj(x).chunk(2, dim=-1)  # (B, H, W, E) each
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))  # (B, E, H, W)
        if torch.jit.is_scripting():  # noqa: SIM108  (TorchScript compiles only this branch; no checkpointing there)
            y = self._scans(x)  # (B, E, H, W)
        else:
            y = recompute_in_backward(self._scans, x)  # (B, E, H, W)
        y = self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)  # (B, H, W, E)
        return self.out_proj(y)


@register_channel_mixer("mamba_channel_mixer")
class MambaChannelMixer(nn.Module):
    """MambaMixer's selective channel mixer, per token (module docstring): ``(B, H, W, C) -> (B, H, W, C)``.

    ``hidden_dim`` is the channel-mixer width E (default ``expand * dim``); E must be divisible by ``group_size``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        expand: float = 2.0,
        group_size: int = 16,
        d_state: int = 16,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        bias: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden_dim = int(hidden_dim or expand * dim)
        if hidden_dim % group_size != 0:
            raise ValueError(f"mamba_channel_mixer: width {hidden_dim} must be divisible by group_size {group_size}.")
        if d_conv % 2 != 1:
            raise ValueError(f"mamba_channel_mixer: d_conv must be odd, got {d_conv}.")
        self.dim, self.hidden_dim, self.group_size = dim, hidden_dim, group_size
        self.dt_rank = math.ceil(group_size / 16) if dt_rank == "auto" else int(dt_rank)
        self.cw_in = nn.Linear(dim, hidden_dim, bias=bias, **dd)
        self.conv1d = nn.Conv1d(group_size, group_size, d_conv, padding=d_conv // 2, groups=group_size, **dd)
        self.ssm = _S6Params(
            2, group_size, d_state, self.dt_rank, dt_min, dt_max, dt_init_floor, dt_scale, backend, **dd
        )
        self.cw_out = nn.Linear(hidden_dim, dim, bias=bias, **dd)

    def _scans(self, xs: torch.Tensor) -> torch.Tensor:  # (T, g, S)
        y = self.ssm(torch.stack([xs, xs.flip(-1)], dim=1))  # (T, 2, g, S)
        return y[:, 0] + y[:, 1].flip(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        B, H, W, _ = x.shape
        u = self.cw_in(x).reshape(-1, self.hidden_dim // self.group_size, self.group_size)  # (T, S, g)
        xs = F.silu(self.conv1d(u.transpose(1, 2)))  # (T, g, S): a sequence of S channel groups
        if torch.jit.is_scripting():  # TorchScript compiles only this branch (no checkpointing there)
            y = self._scans(xs).transpose(1, 2)  # (T, S, g)
        else:
            y = recompute_in_backward(self._scans, xs).transpose(1, 2)  # (T, S, g)
        y = (y * F.silu(u)).reshape(B, H, W, self.hidden_dim)
        return self.cw_out(y)
