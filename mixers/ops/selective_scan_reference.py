"""The Mamba-1 selective scan (S6) one token at a time, and the pieces every S6 kernel shares: the B/C group layout,
the Δ preparation and the output's skip and gate. The kernels (``selective_scan_chunked``, ``selective_scan_triton``)
import from here; the interface ``selective_scan`` imports them (no module imports the interface back).

Per channel d and state n (A (D, N), real, negative), with Δ = softplus(Δ + Δ_bias) if asked:

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]          h_{-1} = 0
    y_t[d]    = Σ_n h_t[d, n] C_t[n] + D[d] u_t[d]        then  y ⊙ SiLU(z)  if z is given

Shapes (mamba_ssm's, channels first): u, Δ, z (b, D, L); A (D, N); B, C (b, N, L) or grouped (b, G, N, L) with
D % G == 0 (channel d uses group d // (D / G)); D_skip, Δ_bias (D,). Output (b, D, L).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["expand_groups", "finish", "grouped_bc", "prepare_delta", "selective_scan_ref"]


def grouped_bc(B: torch.Tensor, C: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C, (b, N, L) or (b, G, N, L), as (b, G, N, L) (one group for the 3-d form); raises unless G divides D."""
    if B.dim() == 3:  # (b, N, L): one group
        B, C = B[:, None], C[:, None]
    if dim % B.shape[1] != 0:
        raise ValueError(f"selective scan: D ({dim}) must be divisible by the number of B/C groups ({B.shape[1]}).")
    return B, C


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C, (b, G, N, L) from ``grouped_bc``, as (b, D, N, L) (each group repeated over its D / G channels)."""
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """Δ + Δ_bias (bias over the channel dim, the second to last), through softplus if asked."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    return F.softplus(delta) if delta_softplus else delta


def finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """The scan's readout completed: y + D ⊙ u, then ⊙ SiLU(z) (each where given)."""
    if D is not None:
        y = y + u * D[..., None]
    if z is not None:
        y = y * F.silu(z)
    return y


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """The S6 recurrence one token at a time with plain autograd (reference; computes in u's dtype)."""
    dim, length = u.shape[1], u.shape[2]
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    B, C = grouped_bc(B, C, dim)
    Bx, Cx = expand_groups(B, dim), expand_groups(C, dim)  # (b, D, N, L)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])  # (b, D, N)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))  # (b, D)
    return finish(torch.stack(ys, dim=-1), u, D, z)
