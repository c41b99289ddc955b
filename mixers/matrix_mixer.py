"""The matrix-mixer family of Hydra §2 (Hwang et al., NeurIPS 2024, arXiv 2407.09941): a sequence mixer is
``Y^h = M^h(X) V^h`` per head, with one structured L x L matrix class per ``structure``, each *data-dependent*
(``data_dependent=True``: M built from per-token projections, "sequence-aligned") or *data-independent* (M a
parameter or a constant for a fixed token count). Code followed: goombalab/hydra ``hydra/modules/matrix_mixer.py``
and ``hydra/modules/matrix_mixers/*.py``. Registry name ``matrix_mixer``: ``{"name": "matrix_mixer", "structure": s}``
builds ``STRUCTURES[s]``, one small class per structure on the shared wrapper ``MatrixMixer``, with its options.

Shared wrapper (as the official ``MatrixMixer``): ``in_proj`` -> ``z`` (gate), ``v`` and the structure's own
branches; a non-causal depthwise Conv1d (kernel ``d_conv``) on ``v`` and the branches, SiLU on ``v`` (and on q/k for
low-rank and quasiseparable, on all for Toeplitz); the mixer; gated RMSNorm (norm before gate); ``out_proj``.
Per head (H = heads, d = ``qk_dim``, L tokens, q_i/k_j per-token projections or learned per-position tables):

    dense           (DI only)  M = W / √L,  W an L x L parameter (xavier normal)
    toeplitz        M_ij = κ_{i-j} · 0.5/√L;  DD: κ_{t} = f_t (t >= 0), r_{-t} (t < 0), two taps per token;
                    DI: κ a (2L-1) parameter.                    Fast form: a linear convolution by real FFT.
    vandermonde     DD: M_ij = Σ_d cos(2π ε q_id j) - cos(2π ε k_jd i), ε = 1e-3, / √(2 L d);
                    DI: same with learned tables and ε = 1.
    dft             (DI only)  M_ij = cos(2π i j / L) / √L (the "DFT" row of Table 2, no parameters)
    cauchy          M_ij = Σ_d 1 / (q̃_id + k̃_jd + 1e-8) / √(L d), q̃ = exp(q) + c, k̃ = exp(k) + c (c learned,
                    0.5; DI: c = 0)
    low_rank        M = q kᵀ / √(L d)                             Fast form: q (kᵀ v), O(L).
    attention       M = softmax(q kᵀ / √d) (over j)
    quasiseparable  Hydra's matrix (see mixers/hydra_mixer.py) with B, C shared by both directions (DD, state
                    size H d, one group); DI: a learned (L, 2 H d) B/C table and dt = softplus(dt_bias).
                    Fast form: two SSD scans.

Every structure but quasiseparable adds the identity (``y = M v + v``), as the official modules do. ``forward`` runs the
fast form (``mix``); ``mixing_matrix(x)`` gives the full operator on ``v`` (``operator``, identity included) and
``forward(x, materialize=True)`` applies it, so the two are testable against each other.

Data-independent forms are bound to the token count of the ``grid`` the builder passes (the stage grid at the
model's ``img_size``); another grid raises an error naming both. Data-dependent forms take any grid (the scales
use the actual L). Tokens are read row-major from ``(B, H, W, C)``. FFTs and scans run in float32 under autocast.

Deviations from the official code: ``head_dim`` (official ``headdim``) defaults to 64 (official 128; Table 2 uses
64 for the non-SAM rows), and is capped at ``expand * dim``; the DD Toeplitz kernel puts f_0 on the diagonal (the
official FFT indexing shifts taps by one position); the DI Vandermonde tables are initialised N(0, 1/L) instead of
zeros (cos has zero gradient at 0, so zero-initialised tables never train) and use the DD formula (the official DI
einsum does not mix tokens).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .grid import GridMismatchError
from .ops import autocast_off, compute_dtype
from .ops.ssd import quasiseparable, quasiseparable_matrix
from .registry import register_mixer
from .ssm_layers import GatedRMSNorm, conv1d_silu, init_dt_bias, inner_heads, same_conv1d

__all__ = [
    "STRUCTURES",
    "AttentionMixer",
    "CauchyMixer",
    "DFTMixer",
    "DenseMixer",
    "LowRankMixer",
    "MatrixMixer",
    "QuasiseparableMixer",
    "ToeplitzMixer",
    "VandermondeMixer",
    "matrix_mixer",
]


class MatrixMixer(nn.Module):
    """Hydra's wrapper around one structured matrix (module docstring); a subclass per structure gives the matrix
    (``operator``), its fast product where there is one (``mix``), its branch widths and its parameters."""

    structure = ""
    data_independent_only = False
    silu_on_branch = True  # SiLU after the conv on the structure's branches too, not only on v

    def __init__(
        self,
        dim: int,
        data_dependent: bool = True,
        expand: float = 2,
        head_dim: int = 64,
        d_conv: int = 7,
        grid: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if data_dependent and self.data_independent_only:
            raise ValueError(f"matrix_mixer: structure {self.structure!r} exists only data-independent.")
        if not data_dependent and grid is None:
            raise ValueError(
                f"matrix_mixer: the data-independent {self.structure!r} form needs the token grid (the builder "
                "passes `grid`; give it explicitly when building the mixer alone)."
            )
        self.d_inner, self.head_dim, self.num_heads = inner_heads("matrix_mixer", dim, expand, head_dim)
        self.dim, self.data_dependent = dim, data_dependent
        self.grid = None if data_dependent else (int(grid[0]), int(grid[1]))
        self.branch = self.branch_width() if data_dependent else 0  # conv'd projections after z and v
        dt_dim = self.dt_width() if data_dependent else 0  # projections that skip the conv
        self.in_proj = nn.Linear(dim, 2 * self.d_inner + self.branch + dt_dim, bias=False, **dd)
        self.conv1d = same_conv1d("matrix_mixer", self.d_inner + self.branch, d_conv, **dd)
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, norm_before_gate=True, **dd)
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False, **dd)
        self.init_structure(self.grid[0] * self.grid[1] if self.grid else 0, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    def branch_width(self) -> int:
        return 0

    def dt_width(self) -> int:
        return 0

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """The structure's own parameters and buffers (``num_tokens``: L of the grid, 0 if data-dependent), created
        on ``device`` in ``dtype``."""

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        """The operator on v (B, L, d_inner): (B or 1, heads, L, L)."""
        raise NotImplementedError

    def mix(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        """``operator`` times v, as (B, L, heads, head_dim); structures with a fast form override it."""
        return self.materialized(v, extra, dt)

    def materialized(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        M = self.operator(v, extra, dt).to(v.dtype)
        return torch.einsum("bhij,bjhp->bihp", M, v.unflatten(-1, (self.num_heads, self.head_dim)))

    def _branches(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """u (B, L, C) -> z (B, L, d_inner), v (B, L, d_inner), the conv'd branch (B, L, branch), raw dt or None."""
        dt_dim = self.in_proj.out_features - 2 * self.d_inner - self.branch
        z, vb, dt = self.in_proj(u).split([self.d_inner, self.d_inner + self.branch, dt_dim], dim=-1)
        if self.silu_on_branch:
            vb = conv1d_silu(vb, self.conv1d)
            v, extra = vb[..., : self.d_inner], vb[..., self.d_inner :]
        else:
            vb = self.conv1d(vb.transpose(1, 2)).transpose(1, 2)
            v, extra = F.silu(vb[..., : self.d_inner]), vb[..., self.d_inner :]
        return z, v, extra, (dt if dt_dim else None)

    def _check_grid(self, H: int, W: int) -> None:
        if self.grid is not None and self.grid != (H, W):
            raise GridMismatchError(
                f"matrix_mixer (data-independent {self.structure!r}) was built for a {self.grid[0]}x{self.grid[1]} "
                f"token grid, got {H}x{W}; build the model for this size (img_size) or use data_dependent=true."
            )

    def mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The operator on ``v`` for input ``x`` (B, H, W, C): (B or 1, heads, L, L), identity included."""
        batch, H, W, _ = x.shape
        self._check_grid(H, W)
        _, v, extra, dt = self._branches(x.reshape(batch, H * W, self.dim))
        return self.operator(v, extra, dt)

    def forward(self, x: torch.Tensor, materialize: bool = False) -> torch.Tensor:  # (B, H, W, C)
        batch, H, W, _ = x.shape
        self._check_grid(H, W)
        z, v, extra, dt = self._branches(x.reshape(batch, H * W, self.dim))
        y = self.materialized(v, extra, dt) if materialize else self.mix(v, extra, dt)  # (B, L, heads, head_dim)
        y = self.norm(y.flatten(2), z)
        return self.out_proj(y).reshape(batch, H, W, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, structure={self.structure!r}, data_dependent={self.data_dependent}, "
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, grid={self.grid}"
        )


def _identity(L: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(L, dtype=like.dtype, device=like.device)


class DenseMixer(MatrixMixer):
    """M = W / √L + I, W (heads, L, L) a parameter (xavier normal); data-independent only."""

    structure = "dense"
    data_independent_only = True

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        M = torch.empty(self.num_heads, num_tokens, num_tokens, device=device, dtype=dtype)
        self.M = nn.Parameter(nn.init.xavier_normal_(M))

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L = v.shape[1]
        return self.M[None] / math.sqrt(L) + _identity(L, v)


class DFTMixer(MatrixMixer):
    """M_ij = cos(2π i j / L) / √L + I_ij (no parameters); data-independent only."""

    structure = "dft"
    data_independent_only = True

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        index = torch.arange(num_tokens, dtype=torch.float64, device=device)  # the angles in float64
        matrix = torch.cos(2 * math.pi * index[:, None] * index / num_tokens)
        self.register_buffer("dft_matrix", matrix.to(torch.get_default_dtype() if dtype is None else dtype))

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L = v.shape[1]
        return (self.dft_matrix / math.sqrt(L)).expand(1, self.num_heads, L, L) + _identity(L, v)


class ToeplitzMixer(MatrixMixer):
    """M_ij = κ_{i-j} · 0.5 / √L + I_ij: DD taps κ_t = f_t (t >= 0), r_{-t} (t < 0) from two projections per token
    and head; DI κ a (heads, 2L - 1) parameter. Fast form: a linear convolution by real FFT, in float32."""

    structure = "toeplitz"

    def branch_width(self) -> int:
        return 2 * self.num_heads  # forward and reverse taps

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        if not self.data_dependent:
            kernel = torch.empty(self.num_heads, 2 * num_tokens - 1, device=device, dtype=dtype)
            self.kernel = nn.Parameter(nn.init.xavier_uniform_(kernel))

    def taps(self, extra: torch.Tensor) -> torch.Tensor:
        """(B or 1, heads, 2L - 1): entry L - 1 + t is κ_t, the coefficient of M_ij for i - j = t."""
        if not self.data_dependent:
            return self.kernel[None]
        f, r = extra.transpose(1, 2).unflatten(1, (2, self.num_heads)).unbind(1)  # (B, heads, L) each
        return torch.cat([r[..., 1:].flip(-1), f], dim=-1)

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L = v.shape[1]
        kernel = self.taps(extra).to(compute_dtype(v.dtype))
        i = torch.arange(L, device=v.device)
        return kernel[..., i[:, None] - i[None, :] + L - 1] * (0.5 / math.sqrt(L)) + _identity(L, v)

    def mix(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L, vh = v.shape[1], v.unflatten(-1, (self.num_heads, self.head_dim))
        with autocast_off(v.device.type):  # real FFT in float32: linear convolution, no wrap-around
            fp32 = compute_dtype(v.dtype)
            kernel = self.taps(extra.to(fp32)).to(fp32)  # (B|1, heads, 2L-1)
            n = 2 * L - 1
            spectrum = torch.fft.rfft(vh.to(fp32).permute(0, 2, 3, 1), n=n) * torch.fft.rfft(kernel, n=n)[:, :, None]
            conv = torch.fft.irfft(spectrum, n=n)[..., L - 1 :]  # (B, heads, P, L): sum_j κ_{i-j} v_j
            return (conv.permute(0, 3, 1, 2) * (0.5 / math.sqrt(L))).to(v.dtype) + vh


class _QKMixer(MatrixMixer):
    """Structures built from q_i, k_j of width ``qk_dim`` per head: per-token projections (DD) or learned (L, heads,
    qk_dim) tables (DI, xavier normal)."""

    def __init__(
        self,
        dim: int,
        data_dependent: bool = True,
        qk_dim: int = 16,
        expand: float = 2,
        head_dim: int = 64,
        d_conv: int = 7,
        grid: tuple[int, int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.qk_dim = qk_dim  # set first: the wrapper's constructor sizes the q, k branch from it
        super().__init__(dim, data_dependent, expand, head_dim, d_conv, grid, device, dtype)

    def branch_width(self) -> int:
        return 2 * self.num_heads * self.qk_dim

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        if not self.data_dependent:
            shape, dd = (num_tokens, self.num_heads, self.qk_dim), dict(device=device, dtype=dtype)
            self.q_table = nn.Parameter(self.init_table(torch.empty(shape, **dd)))
            self.k_table = nn.Parameter(self.init_table(torch.empty(shape, **dd)))

    def init_table(self, table: torch.Tensor) -> torch.Tensor:
        return nn.init.xavier_normal_(table)

    def qk(self, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k as (B or 1, L, heads, qk_dim)."""
        if self.data_dependent:
            q, k = extra.unflatten(-1, (2, self.num_heads, self.qk_dim)).unbind(2)
            return q, k
        return self.q_table[None], self.k_table[None]


class VandermondeMixer(_QKMixer):
    """M_ij = Σ_d [cos(2π ε q_id j) - cos(2π ε k_jd i)] / √(2 L d) + I_ij; DD ε = 1e-3, DI ε = 1 with tables
    initialised with std 1/L (cos has zero gradient at 0: zero tables would never train)."""

    structure = "vandermonde"
    silu_on_branch = False

    def init_table(self, table: torch.Tensor) -> torch.Tensor:
        return torch.randn(table.shape, device=table.device, dtype=table.dtype) / table.shape[0]

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L, (q, k) = v.shape[1], self.qk(extra)
        eps = 1e-3 if self.data_dependent else 1.0
        pos = torch.arange(L, dtype=q.dtype, device=q.device)
        q_part = torch.cos(2 * math.pi * eps * q[:, :, None] * pos[None, None, :, None, None])  # [b, i, j, h, d]
        k_part = torch.cos(2 * math.pi * eps * k[:, None, :] * pos[None, :, None, None, None])
        M = (q_part - k_part).sum(-1).permute(0, 3, 1, 2) / math.sqrt(2 * L * self.qk_dim)
        return M + _identity(L, v)


class CauchyMixer(_QKMixer):
    """M_ij = Σ_d 1 / (q̃_id + k̃_jd + 1e-8) / √(L d) + I_ij, q̃ = exp(q) + c, k̃ = exp(k) + c (DD: c learned, 0.5;
    DI: c = 0)."""

    structure = "cauchy"
    silu_on_branch = False

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().init_structure(num_tokens, device, dtype)
        if self.data_dependent:
            self.cauchy_bias = nn.Parameter(torch.tensor(0.5, device=device, dtype=dtype))

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L, (q, k) = v.shape[1], self.qk(extra)
        c = self.cauchy_bias if self.data_dependent else 0.0
        qt, kt = torch.exp(q) + c, torch.exp(k) + c
        M = (1.0 / (qt[:, :, None] + kt[:, None, :] + 1e-8)).sum(-1).permute(0, 3, 1, 2) / math.sqrt(L * self.qk_dim)
        return M + _identity(L, v)


class LowRankMixer(_QKMixer):
    """M = q kᵀ / √(L d) + I. Fast form: q (kᵀ v) / √(L d) + v, O(L)."""

    structure = "low_rank"

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L, (q, k) = v.shape[1], self.qk(extra)
        return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(L * self.qk_dim) + _identity(L, v)

    def mix(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        (batch, L, _), (q, k) = v.shape, self.qk(extra)
        vh = v.unflatten(-1, (self.num_heads, self.head_dim))
        kv = torch.einsum("bjhd,bjhp->bhdp", k.expand(batch, -1, -1, -1), vh)
        return torch.einsum("bihd,bhdp->bihp", q.expand(batch, -1, -1, -1), kv) / math.sqrt(L * self.qk_dim) + vh


class AttentionMixer(_QKMixer):
    """M = softmax_j(q kᵀ / √d) + I."""

    structure = "attention"
    silu_on_branch = False

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        L, (q, k) = v.shape[1], self.qk(extra)
        return torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(self.qk_dim), dim=-1) + _identity(L, v)


class QuasiseparableMixer(_QKMixer):
    """Hydra's matrix (``ops.ssd.quasiseparable_matrix``) with B, C shared by both directions (DD: projections of
    state size heads · qk_dim, one group; DI: a learned (L, 2 N) B/C table, dt = softplus(dt_bias)). No identity
    term: the diagonal is Hydra's D + W_D v. Fast form: two SSD scans (``ops.ssd.quasiseparable``)."""

    structure = "quasiseparable"

    def __init__(
        self,
        dim: int,
        data_dependent: bool = True,
        qk_dim: int = 16,
        expand: float = 2,
        head_dim: int = 64,
        d_conv: int = 7,
        grid: tuple[int, int] | None = None,
        chunk_size: int | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(dim, data_dependent, qk_dim, expand, head_dim, d_conv, grid, device, dtype)
        self.chunk_size, self.backend = chunk_size, backend

    def dt_width(self) -> int:
        return 2 * self.num_heads

    def init_structure(
        self, num_tokens: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        h, dd = self.num_heads, dict(device=device, dtype=dtype)
        self.d_state = h * self.qk_dim
        if not self.data_dependent:
            self.BC = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_tokens, 2 * self.d_state, **dd)))
        self.dt_bias = nn.Parameter(init_dt_bias(h, **dd))
        self.A_log = nn.Parameter(torch.zeros(h, **dd))
        self.D = nn.Parameter(torch.ones(h, **dd))
        self.fc_D = nn.Linear(self.d_inner, h, bias=False, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"A_log", "D", "dt_bias"}

    def ssm(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> tuple:
        """The arguments of ``ops.ssd.quasiseparable`` after x: (dt_f, dt_b), A, (B, B), (C, C), δ."""
        batch, L = v.shape[:2]
        fp32 = compute_dtype(v.dtype)
        if self.data_dependent:
            BC, dt = extra, dt.unflatten(-1, (2, self.num_heads))
        else:
            BC, dt = self.BC[None].expand(batch, L, -1), v.new_zeros(batch, L, 2, self.num_heads)
        dt = F.softplus(dt.to(fp32) + self.dt_bias.to(fp32)).unbind(2)
        B, C = BC.to(v.dtype).unflatten(-1, (2, 1, self.d_state)).unbind(2)  # (B, L, 1, N) each
        A = -torch.exp(self.A_log.to(fp32))
        return dt, A, (B, B), (C, C), F.linear(v, self.fc_D.weight, self.D)  # δ (B, L, heads)

    def operator(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        return quasiseparable_matrix(*self.ssm(v, extra, dt))

    def mix(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        vh = v.unflatten(-1, (self.num_heads, self.head_dim))
        return quasiseparable(vh, *self.ssm(v, extra, dt), self.chunk_size, None, self.backend)


STRUCTURES: dict[str, type[MatrixMixer]] = {
    cls.structure: cls
    for cls in (
        DenseMixer,
        ToeplitzMixer,
        VandermondeMixer,
        DFTMixer,
        CauchyMixer,
        LowRankMixer,
        AttentionMixer,
        QuasiseparableMixer,
    )
}


@register_mixer("matrix_mixer")
def matrix_mixer(
    dim: int,
    structure: str = "quasiseparable",
    grid: tuple[int, int] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> MatrixMixer:
    """The matrix mixer of one ``structure`` (dense, toeplitz, vandermonde, dft, cauchy, low_rank, attention or
    quasiseparable; its class in ``STRUCTURES``), with that class's ``options``: ``data_dependent`` (default True;
    False builds the matrix for the stage's grid), ``expand``, ``head_dim``, ``d_conv``, and ``qk_dim`` for the
    structures built from query/key-like projections (vandermonde, cauchy, low_rank, attention, quasiseparable),
    ``chunk_size`` and ``backend`` for quasiseparable."""
    if structure not in STRUCTURES:
        raise ValueError(f"matrix_mixer: unknown structure {structure!r}; use one of {', '.join(STRUCTURES)}.")
    cls = STRUCTURES[structure]
    accepted = [name for name in inspect.signature(cls).parameters if name not in ("dim", "grid", "device", "dtype")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"matrix_mixer ({structure}) got unknown option(s) {unknown}; it accepts {accepted}.")
    return cls(dim, grid=grid, device=device, dtype=dtype, **options)
