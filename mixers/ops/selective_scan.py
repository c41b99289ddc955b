"""Mamba-1 selective scan (S6): a sequential reference, an exact fast pure-PyTorch path and the fused ``mamba_ssm``
CUDA kernel (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, arXiv 2312.00752;
semantics and argument layout of state-spaces/mamba ``mamba_ssm/ops/selective_scan_interface.py``,
``selective_scan_fn`` / ``selective_scan_ref``).

Per channel d and state n (A of shape (D, N), real, negative), with Δ = softplus(Δ + Δ_bias) if asked:

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]          h_{-1} = 0
    y_t[d]    = Σ_n h_t[d, n] C_t[n] + D[d] u_t[d]        then  y ⊙ SiLU(z)  if z is given

Shapes (mamba_ssm's, channels first): u, Δ, z (b, D, L); A (D, N); B, C (b, N, L) or grouped (b, G, N, L) with
D % G == 0 (channel d uses group d // (D / G)); D_skip, Δ_bias (D,). Output (b, D, L) in u's dtype.

- ``selective_scan_ref``: the recurrence as written, one step per token, plain autograd (test oracle; slow:
  ~400x slower than the fast path in fwd+bwd at L = 3136).
- ``selective_scan_torch``: exact and fast on CPU. The decays ``a_t = exp(Δ_t A)`` and inputs ``b_t = Δ_t B_t u_t``
  are computed in bulk in the contiguous layout (L, b, G, D/G, N) (B, C broadcast over their group), then the
  first-order linear recurrence ``h_t = a_t ⊙ h_{t-1} + b_t`` runs in a custom ``autograd.Function``
  (``LinearRecurrence``): the forward is one fused multiply-add per step into a preallocated state buffer; the
  backward is the reverse recurrence ``g_t = dh_t + a_{t+1} ⊙ g_{t+1}``, giving ``da_t = g_t ⊙ h_{t-1}`` and
  ``db_t = g_t`` (shown equal to plain autograd by ``gradcheck`` in float64). The readout ``y_t = h_t C_t`` is one
  batched matmul. Stable: only products of decays ≤ 1, no cumulative sums or divisions. The loop is kept out of
  ``torch.compile`` graphs (it would be unrolled L times).
- ``selective_scan``: dispatch. ``backend="auto"`` runs the fused kernel when ``mamba_ssm`` imports and the tensors
  are on CUDA with d_state ≤ 256, else the torch path; ``"torch"``/``"fused"`` force one. The scan computes in
  float32 (float64 stays float64) with autocast off and returns u's dtype; the fused kernel gets D and Δ_bias in
  float32, as it requires, and is wrapped in ``torch.compiler.disable`` (same conventions as ``ops/ssd.py``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import autocast_off

__all__ = [
    "LinearRecurrence",
    "fused_selective_scan_available",
    "linear_recurrence",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
]

BACKENDS = ("auto", "torch", "fused")
MAX_FUSED_D_STATE = 256


def _expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C, (b, N, L) or (b, G, N, L), as (b, D, N, L) (each group repeated over its D / G channels)."""
    if BC.dim() == 3:
        return BC[:, None].expand(BC.shape[0], dim, *BC.shape[1:])
    groups = BC.shape[1]
    if dim % groups != 0:
        raise ValueError(f"selective scan: D ({dim}) must be divisible by the number of B/C groups ({groups}).")
    return BC.repeat_interleave(dim // groups, dim=1)


def _prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    return F.softplus(delta) if delta_softplus else delta


def _finish(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
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
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    Bx, Cx = _expand_groups(B, dim), _expand_groups(C, dim)  # (b, D, N, L)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])  # (b, D, N)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))  # (b, D)
    return _finish(torch.stack(ys, dim=-1), u, D, z)


class LinearRecurrence(torch.autograd.Function):
    """``h_t = a_t ⊙ h_{t-1} + b_t`` (h_{-1} = 0) along dim 0 of a, b (L, ...); returns all h (L, ...).

    Backward (reverse recurrence): ``g_t = dh_t + a_{t+1} ⊙ g_{t+1}``, ``da_t = g_t ⊙ h_{t-1}``, ``db_t = g_t``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a.contiguous(), b.contiguous()
        h = torch.empty_like(b)
        h[0] = b[0]
        for t in range(1, b.shape[0]):
            torch.addcmul(b[t], a[t], h[t - 1], out=h[t])
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, h = ctx.saved_tensors
        g = torch.empty_like(h)
        g[-1] = dh[-1]
        for t in range(h.shape[0] - 2, -1, -1):
            torch.addcmul(dh[t], a[t + 1], g[t + 1], out=g[t])
        da = torch.zeros_like(a)
        da[1:] = g[1:] * h[:-1]
        return da, g


@torch.compiler.disable
def linear_recurrence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All states of ``h_t = a_t ⊙ h_{t-1} + b_t`` along dim 0 (``LinearRecurrence``; not traced by compile)."""
    return LinearRecurrence.apply(a, b)


def selective_scan_torch(
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
    """The S6 scan with bulk decays/inputs and the custom-backward recurrence (computes in u's dtype).

    Works in the contiguous layout (L, b, G, D/G, N), so B and C broadcast over their group's channels without
    being copied per channel, and the readout is one batched matmul."""
    batch, dim, length = u.shape
    if B.dim() == 3:  # (b, N, L): one group
        B, C = B[:, None], C[:, None]
    groups, n = B.shape[1], B.shape[2]
    if dim % groups != 0:
        raise ValueError(f"selective scan: D ({dim}) must be divisible by the number of B/C groups ({groups}).")
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    dt = delta.permute(2, 0, 1).reshape(length, batch, groups, dim // groups, 1)  # (L, b, G, Dg, 1)
    du = dt * u.permute(2, 0, 1).reshape(length, batch, groups, dim // groups, 1)
    Bt = B.permute(3, 0, 1, 2).contiguous()[:, :, :, None, :]  # (L, b, G, 1, N)
    Ct = C.permute(3, 0, 1, 2).contiguous()[..., None]  # (L, b, G, N, 1)
    a = torch.exp(dt * A.reshape(groups, dim // groups, n))  # (L, b, G, Dg, N) decays
    h = linear_recurrence(a, du * Bt)  # (L, b, G, Dg, N) states
    y = torch.matmul(h, Ct).reshape(length, batch, dim).permute(1, 2, 0)  # (b, D, L)
    return _finish(y, u, D, z)


@functools.cache
def _fused_kernel():
    """mamba_ssm's ``selective_scan_fn`` or None (imported on first use only)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a broken CUDA build (mamba-ssm >= 2.3 needs MAMBA_KEEP_CUDA_BUILD)
        return None
    return selective_scan_fn


def fused_selective_scan_available() -> bool:
    return torch.cuda.is_available() and _fused_kernel() is not None


@torch.compiler.disable
def _selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return _fused_kernel()(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        D=None if D is None else D.float(),
        z=None if z is None else z.contiguous(),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
    )


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The S6 scan in float32 (float64 kept) with autocast off; returns u's dtype. See the module docstring."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    fusable = u.is_cuda and A.shape[-1] <= MAX_FUSED_D_STATE and _fused_kernel() is not None
    if backend == "fused" and not fusable:
        raise RuntimeError(
            "backend='fused' needs CUDA tensors, d_state <= 256 and mamba_ssm (selective_scan_fn); got "
            f"{u.device.type} tensors, d_state {A.shape[-1]}, mamba_ssm "
            f"{'importable' if _fused_kernel() else 'not importable'}."
        )
    use_fused = backend == "fused" or (backend == "auto" and fusable)
    dtype = u.dtype
    compute = torch.promote_types(dtype, torch.float32)
    with autocast_off(u.device.type):
        args = [None if t is None else t.to(compute) for t in (u, delta, A, B, C, D, z, delta_bias)]
        scan = _selective_scan_fused if use_fused else selective_scan_torch
        out = scan(*args, delta_softplus)
    return out.to(dtype)
