"""The matrix-mixer family of Hydra §2 (Hwang et al., NeurIPS 2024, arXiv 2407.09941): a sequence mixer is
``Y^h = M^h(X) V^h`` per head, with one structured L x L matrix class per ``structure``, each *data-dependent*
(``data_dependent=True``: M built from per-token projections, "sequence-aligned") or *data-independent* (M a
parameter or a constant for a fixed token count). Code followed: goombalab/hydra ``hydra/modules/matrix_mixer.py``
and ``hydra/modules/matrix_mixers/*.py``. Registry name ``matrix_mixer``.

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

Every structure but quasiseparable adds the identity (``y = M v + v``), as the official modules do. The fast form is
what ``forward`` runs; ``mixing_matrix(x)`` gives the full operator on ``v`` (identity included) and
``forward(x, materialize=True)`` applies it, so the two are testable against each other.

Data-independent forms are bound to the token count of the ``grid`` the builder passes (the stage grid at the
model's ``img_size``); another grid raises an error naming both. Data-dependent forms take any grid (the scales
use the actual L). Tokens are read row-major from ``(B, H, W, C)``. FFTs and scans run in float32 under autocast.

Deviations from the official code: ``headdim`` defaults to 64 (official 128; Table 2 uses 64 for the non-SAM
rows), and is capped at ``expand * dim``; the DD Toeplitz kernel puts f_0 on the diagonal (the official FFT
indexing shifts taps by one position); the DI Vandermonde tables are initialised N(0, 1/L) instead of zeros (cos
has zero gradient at 0, so zero-initialised tables never train) and use the DD formula (the official DI einsum
does not mix tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .hydra_mixer import GatedRMSNorm, init_dt_bias, quasiseparable_mix
from .ops import autocast_off
from .ops.ssd import ssd_matrix
from .registry import register_mixer

__all__ = ["STRUCTURES", "MatrixMixer"]

STRUCTURES = ("dense", "toeplitz", "vandermonde", "dft", "cauchy", "low_rank", "attention", "quasiseparable")
DI_ONLY = ("dense", "dft")
QK_STRUCTURES = ("vandermonde", "cauchy", "low_rank", "attention")


@register_mixer("matrix_mixer")
class MatrixMixer(nn.Module):
    """One structured matrix mixer in Hydra's shared wrapper (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        structure: str = "quasiseparable",
        data_dependent: bool = True,
        qk_dim: int = 16,
        expand: int = 2,
        headdim: int = 64,
        d_conv: int = 7,
        grid: tuple[int, int] | None = None,
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if structure not in STRUCTURES:
            raise ValueError(f"matrix_mixer: unknown structure {structure!r}; use one of {', '.join(STRUCTURES)}.")
        if data_dependent and structure in DI_ONLY:
            raise ValueError(f"matrix_mixer: structure {structure!r} exists only data-independent.")
        d_inner = expand * dim
        headdim = min(headdim, d_inner)
        if d_inner % headdim != 0:
            raise ValueError(f"matrix_mixer: expand * dim ({d_inner}) must be divisible by headdim ({headdim}).")
        if d_conv % 2 != 1:
            raise ValueError(f"matrix_mixer: d_conv must be odd, got {d_conv}.")
        self.dim, self.d_inner, self.headdim, self.qk_dim = dim, d_inner, headdim, qk_dim
        self.structure, self.data_dependent = structure, data_dependent
        self.nheads = h = d_inner // headdim
        self.d_state = h * qk_dim
        self.chunk_size, self.backend = chunk_size, backend
        self.grid = None
        if not data_dependent:
            if grid is None:
                raise ValueError(
                    f"matrix_mixer: the data-independent {structure!r} form needs the token grid (the builder "
                    "passes `grid`; give it explicitly when building the mixer alone)."
                )
            self.grid = (int(grid[0]), int(grid[1]))
        L = self.grid[0] * self.grid[1] if self.grid else 0

        # the structure's own branches after z and v: (size, through the conv)
        branch = 0
        if data_dependent and structure == "toeplitz":
            branch = 2 * h  # forward and reverse taps
        elif data_dependent and structure in (*QK_STRUCTURES, "quasiseparable"):
            branch = 2 * self.d_state  # q, k (or C, B)
        self.branch = branch
        dt_dim = 2 * h if (data_dependent and structure == "quasiseparable") else 0
        self.in_proj = nn.Linear(dim, 2 * d_inner + branch + dt_dim, bias=False)
        conv_dim = d_inner + branch
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, padding=d_conv // 2, groups=conv_dim)
        self.norm = GatedRMSNorm(d_inner, eps=1e-5, norm_before_gate=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

        if structure == "dense":
            self.M = nn.Parameter(nn.init.xavier_normal_(torch.empty(h, L, L)))
        elif structure == "toeplitz" and not data_dependent:
            self.kernel = nn.Parameter(nn.init.xavier_uniform_(torch.empty(h, 2 * L - 1)))
        elif structure == "dft":
            index = torch.arange(L, dtype=torch.float64)
            self.register_buffer("dft_matrix", torch.cos(2 * math.pi * index[:, None] * index / L).float())
        elif structure == "vandermonde" and not data_dependent:
            self.q_table = nn.Parameter(torch.randn(L, h, qk_dim) / L)
            self.k_table = nn.Parameter(torch.randn(L, h, qk_dim) / L)
        elif structure in ("cauchy", "low_rank", "attention") and not data_dependent:
            self.q_table = nn.Parameter(nn.init.xavier_normal_(torch.empty(L, h, qk_dim)))
            self.k_table = nn.Parameter(nn.init.xavier_normal_(torch.empty(L, h, qk_dim)))
        if structure == "cauchy" and data_dependent:
            self.cauchy_bias = nn.Parameter(torch.tensor(0.5))
        if structure == "quasiseparable":
            if not data_dependent:
                self.BC = nn.Parameter(nn.init.xavier_normal_(torch.empty(L, 2 * self.d_state)))
            self.dt_bias = nn.Parameter(init_dt_bias(h))
            self.A_log = nn.Parameter(torch.zeros(h))
            self.D = nn.Parameter(torch.ones(h))
            self.fc_D = nn.Linear(d_inner, h, bias=False)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"A_log", "D", "dt_bias"} if self.structure == "quasiseparable" else set()

    # --- pieces ---------------------------------------------------------------------------------------------
    def _branches(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """u (B, L, C) -> z (B, L, d_inner), v (B, L, d_inner), the conv'd branch (B, L, branch), raw dt or None."""
        dt_dim = self.in_proj.out_features - 2 * self.d_inner - self.branch
        z, vb, dt = self.in_proj(u).split([self.d_inner, self.d_inner + self.branch, dt_dim], dim=-1)
        vb = self.conv1d(vb.transpose(1, 2)).transpose(1, 2)
        if self.structure in ("vandermonde", "cauchy", "attention"):
            v, extra = F.silu(vb[..., : self.d_inner]), vb[..., self.d_inner :]  # SiLU on v only
        else:
            vb = F.silu(vb)
            v, extra = vb[..., : self.d_inner], vb[..., self.d_inner :]
        return z, v, extra, (dt if dt_dim else None)

    def _qk(self, extra: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k as (B or 1, L, H, d): projections (DD) or the learned tables (DI)."""
        if self.data_dependent:
            q, k = extra.unflatten(-1, (2, self.nheads, self.qk_dim)).unbind(2)
            return q, k
        return self.q_table[None], self.k_table[None]

    def _toeplitz_kernel(self, extra: torch.Tensor, L: int) -> torch.Tensor:
        """(B or 1, H, 2L-1): entry L-1+t is κ_t, the coefficient of M_ij for i - j = t."""
        if not self.data_dependent:
            return self.kernel[None]
        f, r = extra.transpose(1, 2).unflatten(1, (2, self.nheads)).unbind(1)  # (B, H, L) each
        return torch.cat([r[..., 1:].flip(-1), f], dim=-1)

    def _qs_params(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None):
        """Quasiseparable: dt (2B, L, H) stacked [forward; backward in scan order], A, B, C (2B, L, 1, N), δ."""
        batch, L = v.shape[:2]
        fp32 = torch.promote_types(v.dtype, torch.float32)
        h = self.nheads
        if self.data_dependent:
            dt = torch.cat([dt[..., :h], dt[..., h:].flip(1)])
            BC = extra
        else:
            dt = v.new_zeros(2 * batch, L, h)
            BC = self.BC[None].expand(batch, L, 2 * self.d_state)
        dt = F.softplus(dt.to(fp32) + self.dt_bias.to(fp32))
        B, C = BC.to(v.dtype).unflatten(-1, (2, 1, self.d_state)).unbind(2)  # (B, L, 1, N) each
        B, C = torch.cat([B, B.flip(1)]), torch.cat([C, C.flip(1)])
        A = -torch.exp(self.A_log.to(fp32))
        diag = F.linear(v, self.fc_D.weight, self.D)  # (B, L, H)
        return dt, A, B, C, diag

    def mixing_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The operator on ``v`` for input ``x`` (B, H, W, C): (B or 1, heads, L, L), identity included."""
        batch, H, W, _ = x.shape
        self._check_grid(H, W)
        _, v, extra, dt = self._branches(x.reshape(batch, H * W, self.dim))
        return self._matrix(v, extra, dt)

    def _matrix(self, v: torch.Tensor, extra: torch.Tensor, dt: torch.Tensor | None) -> torch.Tensor:
        batch, L = v.shape[:2]
        s, d = self.structure, self.qk_dim
        eye = torch.eye(L, dtype=v.dtype, device=v.device)
        if s == "dense":
            return self.M[None] / math.sqrt(L) + eye
        if s == "dft":
            return (self.dft_matrix / math.sqrt(L)).expand(1, self.nheads, L, L) + eye
        if s == "toeplitz":
            kernel = self._toeplitz_kernel(extra, L).to(torch.promote_types(v.dtype, torch.float32))
            i = torch.arange(L, device=v.device)
            return kernel[..., i[:, None] - i[None, :] + L - 1] * (0.5 / math.sqrt(L)) + eye
        if s == "quasiseparable":
            dt, A, B, C, diag = self._qs_params(v, extra, dt)
            M = ssd_matrix(dt, A, B, C)  # (2B, H, L, L), the two scans in scan order
            M = F.pad(M[..., :-1, :], (0, 0, 1, 0))  # shift by one: row i <- row i-1
            return M[:batch] + M[batch:].flip(-1, -2) + torch.diag_embed(diag.transpose(1, 2))
        q, k = self._qk(extra, L)
        if s == "vandermonde":
            eps = 1e-3 if self.data_dependent else 1.0
            pos = torch.arange(L, dtype=q.dtype, device=q.device)
            q_part = torch.cos(2 * math.pi * eps * q[:, :, None] * pos[None, None, :, None, None])  # [b, i, j, h, d]
            k_part = torch.cos(2 * math.pi * eps * k[:, None, :] * pos[None, :, None, None, None])
            M = (q_part - k_part).sum(-1).permute(0, 3, 1, 2) / math.sqrt(2 * L * d)
        elif s == "cauchy":
            c = self.cauchy_bias if self.data_dependent else 0.0
            qt, kt = torch.exp(q) + c, torch.exp(k) + c
            M = (1.0 / (qt[:, :, None] + kt[:, None, :] + 1e-8)).sum(-1).permute(0, 3, 1, 2) / math.sqrt(L * d)
        elif s == "low_rank":
            M = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(L * d)
        else:  # attention
            M = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d), dim=-1)
        return M + eye

    def _check_grid(self, H: int, W: int) -> None:
        if self.grid is not None and self.grid != (H, W):
            raise ValueError(
                f"matrix_mixer (data-independent {self.structure!r}) was built for a {self.grid[0]}x{self.grid[1]} "
                f"token grid, got {H}x{W}; build the model for this size (img_size) or use data_dependent=true."
            )

    # --- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, materialize: bool = False) -> torch.Tensor:  # (B, H, W, C)
        batch, H, W, _ = x.shape
        L, h, p = H * W, self.nheads, self.headdim
        self._check_grid(H, W)
        z, v, extra, dt = self._branches(x.reshape(batch, L, self.dim))
        vh = v.unflatten(-1, (h, p))  # (B, L, H, P)
        s = self.structure
        if materialize or s not in ("quasiseparable", "toeplitz", "low_rank"):
            y = torch.einsum("bhij,bjhp->bihp", self._matrix(v, extra, dt).to(v.dtype), vh)
        elif s == "quasiseparable":
            dt, A, B, C, diag = self._qs_params(v, extra, dt)
            y = quasiseparable_mix(vh, dt, A, B, C, diag, self.chunk_size, backend=self.backend)
        elif s == "toeplitz":
            with autocast_off(x.device.type):  # real FFT in float32: linear convolution, no wrap-around
                fp32 = torch.promote_types(v.dtype, torch.float32)
                kernel = self._toeplitz_kernel(extra.to(fp32), L).to(fp32)  # (B|1, H, 2L-1)
                n = 2 * L - 1
                spectrum = (
                    torch.fft.rfft(vh.to(fp32).permute(0, 2, 3, 1), n=n) * torch.fft.rfft(kernel, n=n)[:, :, None]
                )
                conv = torch.fft.irfft(spectrum, n=n)[..., L - 1 :]  # (B, H, P, L): sum_j κ_{i-j} v_j
                y = (conv.permute(0, 3, 1, 2) * (0.5 / math.sqrt(L))).to(v.dtype) + vh
        elif s == "low_rank":
            q, k = self._qk(extra, L)
            kv = torch.einsum("bjhd,bjhp->bhdp", k.expand(batch, -1, -1, -1), vh)
            y = torch.einsum("bihd,bhdp->bihp", q.expand(batch, -1, -1, -1), kv) / math.sqrt(L * self.qk_dim) + vh
        y = self.norm(y.flatten(2), z)
        return self.out_proj(y).reshape(batch, H, W, self.dim)

    def extra_repr(self) -> str:
        return (
            f"{self.dim}, structure={self.structure!r}, data_dependent={self.data_dependent}, "
            f"nheads={self.nheads}, headdim={self.headdim}, qk_dim={self.qk_dim}, grid={self.grid}"
        )
