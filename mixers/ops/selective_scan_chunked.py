"""Mamba-1 selective scan (S6): a sequential reference, an exact chunked pure-PyTorch path and the fused ``mamba_ssm``
CUDA kernel (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, arXiv 2312.00752;
semantics and argument layout of state-spaces/mamba ``mamba_ssm/ops/selective_scan_interface.py``,
``selective_scan_fn`` / ``selective_scan_ref``).

Per channel d and state n (A of shape (D, N), real, negative), with Δ = softplus(Δ + Δ_bias) if asked:

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]          h_{-1} = 0
    y_t[d]    = Σ_n h_t[d, n] C_t[n] + D[d] u_t[d]        then  y ⊙ SiLU(z)  if z is given

Shapes (mamba_ssm's, channels first): u, Δ, z (b, D, L); A (D, N); B, C (b, N, L) or grouped (b, G, N, L) with
D % G == 0 (channel d uses group d // (D / G)); D_skip, Δ_bias (D,). Output (b, D, L) in u's dtype.

- ``selective_scan_ref``: the recurrence as written, one step per token, plain autograd (test oracle).
- ``selective_scan_torch``: exact, in chunks of Q tokens (``chunk_size``, default 64), O(L / Q) Python steps. It
  works token-major, u, Δ as (L, b, G, D/G) views of their memory and B, C copied to (L, b, G, N), and materialises
  states (Q, b, G, D/G, N) for one chunk at a time, in buffers reused by every chunk. Per chunk: decays
  a_t = exp(Δ_t A) and inputs x_t = Δ_t u_t B_t in bulk, the entry state folded in (x_s += a_s h_{s-1}), all Q states of
  h_t = a_t h_{t-1} + x_t at once by a pairwise tree reduction (``_linear_scan``: 2 log₂ Q whole-slice levels,
  ~3 Q multiply-adds), and the readout y_t = Σ_n h_t C_t as one einsum. The last state enters the next chunk.
  It runs as the custom op ``mixerzoo::chunked_selective_scan`` (opaque to ``torch.compile``, so a compiled model
  keeps the eager kernel) with a registered backward: training saves the inputs and only the state entering
  each chunk ((L / Q) b D N, not L b D N); its backward walks the chunks backwards, recomputes the chunk's states
  from its entry state and solves the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} with the same tree
  (checked against autograd of the reference in float64, and by ``gradcheck``). Without gradients only the running
  state is kept. Large batches are scanned in independent (batch, group) blocks of ≤ ``TILE_ELEMENTS`` state
  elements per chunk (cache-sized on CPU; on CUDA a bound on the workspace).
  Stability in float32: every exponent is Δ_t A ≤ 0 (Δ ≥ 0 after softplus, A < 0), so every decay is in [0, 1]; the
  tree only multiplies decays together and adds inputs, so no exp of a positive (cumulative) sum, no division and no
  difference of cumulative sums ever appears: products of decays can only underflow towards 0, exactly where the true
  decay is negligible. (Segment-sum decays exp(A (S_t - S_τ)) would be stable too, but with a different A per (d, n)
  they need Q² / 2 exps per (d, n) and chunk instead of Q: the SSD trick pays only for Mamba-2's scalar A per head.)
  Control flow depends on shapes only; exported graphs take ``_scan_traced`` instead (next item): this loop
  unrolled took inductor over 25 minutes on a one-block model.
- ``_scan_traced``: the same chunked scan as standard ops, for ``torch.export`` (and so ONNX), taken whenever
  ``torch.compiler.is_exporting()`` (``torch.compile`` calls the custom op instead). The chunk loop is one ``scan``
  higher-order op (``torch._higher_order_ops``, a prototype API) whose body is one chunk: the loop is not unrolled, so
  the graph has no break and its size does not grow with L (inductor lowers it to a while loop; ONNX export gives a
  ``Scan`` node). The body is functional (no buffers, no ``out=``): decays and inputs in bulk, the entry state folded
  in, the same pairwise tree as ``_linear_scan`` (``_linear_scan_functional``), the readout einsum; the chunk's last
  state is the carry. L is padded to a multiple of Q with Δ = 0 (decay 1, input 0: the state passes unchanged, the
  outputs are dropped). Gradients come from the op's own autograd, which keeps the carry entering each chunk, as the
  eager Function does. No (batch, group) blocks here: a chunk holds Q b D N state elements at once.
- ``selective_scan``: dispatch. ``backend="auto"`` runs the fused kernel when ``mamba_ssm`` imports and the tensors
  are on CUDA with d_state ≤ 256, else the torch path. ``"torch"``/``"fused"``/``"triton"`` force one. The Triton
  kernels of ``selective_scan_triton.py`` are opt-in until they have run on a GPU; they take CPU tensors only in the
  Triton interpreter (``TRITON_INTERPRET=1``, which the tests use). The scan computes in float32 (float64
  stays float64) with autocast off and returns u's dtype; the fused kernel gets D and Δ_bias in float32, as it
  requires. The fused and Triton calls are wrapped in ``torch.compiler.disable``: the declared graph breaks, on CUDA
  only (same conventions as ``ops/ssd.py``). Whether a kernel imports is asked through ``_importable(name)``, a
  constant for ``torch.compile`` (tracing the import itself would break the graph).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from . import BACKENDS, autocast_off, compute_dtype, kernel_importable, optional_kernel, use_fused

__all__ = [
    "fused_selective_scan_available",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "triton_selective_scan_available",
]

MAX_FUSED_D_STATE = 256
# State elements per chunk and block: on CPU a block stays in cache; on CUDA it bounds the workspace.
TILE_ELEMENTS = {"cpu": 2**20, "default": 2**26}


def grouped_bc(B: torch.Tensor, C: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B and C, (b, N, L) or (b, G, N, L), as (b, G, N, L) (one group for the 3-d form); raises unless G divides D."""
    if B.dim() == 3:  # (b, N, L): one group
        B, C = B[:, None], C[:, None]
    if dim % B.shape[1] != 0:
        raise ValueError(f"selective scan: D ({dim}) must be divisible by the number of B/C groups ({B.shape[1]}).")
    return B, C


def _expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C, (b, G, N, L) from ``grouped_bc``, as (b, D, N, L) (each group repeated over its D / G channels)."""
    return BC.repeat_interleave(dim // BC.shape[1], dim=1)


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
    B, C = grouped_bc(B, C, dim)
    Bx, Cx = _expand_groups(B, dim), _expand_groups(C, dim)  # (b, D, N, L)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])  # (b, D, N)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))  # (b, D)
    return _finish(torch.stack(ys, dim=-1), u, D, z)


def _linear_scan(a: torch.Tensor, x: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor, reverse: bool) -> None:
    """Writes into ``out`` the first-order linear recurrence along dim 0 (length m), by pairwise tree reduction:

        forward:  out[t] = a[t] ⊙ out[t-1] + x[t]    (out[-1] = 0)
        reverse:  out[t] = a[t] ⊙ out[t+1] + x[t]    (out[m] = 0; a[m-1] is never read)

    Neighbouring steps are composed in pairs, ``(a₂, x₂) = (a_hi a_lo, a_hi x_lo + x_hi)``, the half-length
    recurrence is solved recursively, and the other half is filled in from its solved neighbours: 2⌈log₂ m⌉ levels,
    about 3 m multiply-adds in all, each a whole-slice op. Only products of the given a and sums with x are formed:
    with decays a ∈ [0, 1] nothing can overflow. ``scratch`` (flat, ≥ 2 m · x[0].numel() elements) holds the
    halved sequences, so nothing is allocated."""
    m = x.shape[0]
    if m == 1:
        out.copy_(x)
        return
    p, size = m // 2, x[0].numel()
    x2, a2 = (scratch[i * p * size : (i + 1) * p * size].view(p, *x.shape[1:]) for i in range(2))
    rest = scratch[2 * p * size :]
    if not reverse:  # pairs (0, 1), (2, 3), ...: each pair's second step is solved at the next level
        lo, hi = slice(0, 2 * p, 2), slice(1, 2 * p, 2)
        torch.addcmul(x[hi], a[hi], x[lo], out=x2)
        if p > 1:  # the last level never reads its decay
            torch.mul(a[hi], a[lo], out=a2)
        _linear_scan(a2, x2, out[hi], rest, reverse)
        out[0].copy_(x[0])
        if m > 2:  # the even steps from their solved predecessors
            torch.addcmul(x[2::2], a[2::2], out[1 : m - 1 : 2], out=out[2::2])
    else:  # pairs counted from the end: (m-2, m-1), (m-4, m-3), ...; each pair's first step is solved
        r = m - 2 * p
        lo, hi = slice(r, m - 1, 2), slice(r + 1, m, 2)
        torch.addcmul(x[lo], a[lo], x[hi], out=x2)
        if p > 1:
            torch.mul(a[lo], a[hi], out=a2)
        _linear_scan(a2, x2, out[lo], rest, reverse)
        out[m - 1].copy_(x[m - 1])
        if m > 2:  # the remaining steps from their solved successors
            torch.addcmul(x[1 - r : m - 1 : 2], a[1 - r : m - 1 : 2], out[2 - r : m : 2], out=out[1 - r : m - 1 : 2])


def _chunks(length: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk_size, length)) for s in range(0, length, chunk_size)]


def _tiles(batch: int, groups: int, group_elements: int, budget: int) -> list[tuple[slice, slice]]:
    """(batch, group) blocks scanned one after the other, each holding ≤ ``budget`` state elements per chunk where
    possible (``group_elements``: one batch entry and one group of a chunk). Blocks are independent scans."""
    if groups * group_elements <= budget:
        step = budget // (groups * group_elements)
        return [(slice(i, min(i + step, batch)), slice(0, groups)) for i in range(0, batch, step)]
    step = max(1, budget // group_elements)
    return [(slice(i, i + 1), slice(j, min(j + step, groups))) for i in range(batch) for j in range(0, groups, step)]


class _Workspace:
    """Buffers for one chunk of states (Q, b', G', Dg, N) of a block, reused by every chunk: large tensors allocated
    per chunk would cost more than the arithmetic on CPU (fresh pages) and fragment the CUDA cache."""

    def __init__(self, like: torch.Tensor, chunk: int, state_shape: tuple[int, ...], names: tuple[str, ...]) -> None:
        self.state_shape = state_shape
        self.h0 = like.new_empty(state_shape)  # the state entering the current chunk
        self.a = like.new_empty((chunk + 1, *state_shape))  # one spare row: the reverse scan reads decays shifted
        for name in names:
            setattr(self, name, like.new_empty((chunk, *state_shape)))
        self.scratch = like.new_empty(2 * chunk * math.prod(state_shape))

    def states(self, dt, dtu, A, B, s: int, e: int) -> torch.Tensor:
        """Decays a_t = exp(Δ_t A) into ``a``, inputs x_t = Δ_t u_t B_t (plus a_s h0 at the first token) into ``x``,
        and the states h_t of tokens s..e-1 into ``h``; returns h[:e - s]."""
        q = e - s
        a, x, h = self.a[:q], self.x[:q], self.h[:q]
        torch.mul(dt[s:e, ..., None], A, out=a).exp_()  # Δ ≥ 0, A < 0: exponents ≤ 0, decays in [0, 1]
        torch.mul(dtu[s:e, ..., None], B[s:e, :, :, None, :], out=x)
        x[0].addcmul_(a[0], self.h0)
        _linear_scan(a, x, h, self.scratch, reverse=False)
        return h


def _blocks(u, A, chunk_size: int, tile_elements: int | None):
    """The chunks (start, end) and the (batch, group) blocks of a token-major scan, and the chunk length."""
    length, batch, groups, dg = u.shape
    chunk = min(chunk_size, length)
    budget = tile_elements or TILE_ELEMENTS.get(u.device.type, TILE_ELEMENTS["default"])
    return _chunks(length, chunk), _tiles(batch, groups, chunk * dg * A.shape[-1], budget), chunk


def _workspace(ws, like, chunk, state_shape, names) -> _Workspace:
    return ws if ws is not None and ws.state_shape == state_shape else _Workspace(like, chunk, state_shape, names)


def _scan_forward(u, dt, A, B, C, chunk_size: int, tile_elements: int | None, keep_states: bool):
    """Token-major chunked scan: u, Δ (L, b, G, Dg); A (G, Dg, N); B, C (L, b, G, N) -> y (L, b, G, Dg), and the
    state entering each chunk (n_chunks, b, G, Dg, N) if ``keep_states`` (else None)."""
    chunks, tiles, chunk = _blocks(u, A, chunk_size, tile_elements)
    dtu = dt * u
    y = torch.empty_like(u)
    starts = u.new_empty((len(chunks), *u.shape[1:], A.shape[-1])) if keep_states else None
    ws = None
    for bs, gs in tiles:
        dt_, dtu_, A_, B_, C_ = dt[:, bs, gs], dtu[:, bs, gs], A[gs], B[:, bs, gs], C[:, bs, gs]
        ws = _workspace(ws, u, chunk, (*dt_.shape[1:], A.shape[-1]), ("x", "h"))
        ws.h0.zero_()
        for c, (s, e) in enumerate(chunks):
            if keep_states:
                starts[c, bs, gs] = ws.h0
            hs = ws.states(dt_, dtu_, A_, B_, s, e)
            y[s:e, bs, gs] = torch.einsum("qbgdn,qbgn->qbgd", hs, C_[s:e])  # y_t = Σ_n h_t[n] C_t[n]
            ws.h0.copy_(hs[-1])
    return y, starts


# The eager chunked scan as a pair of custom ops (forward, backward) with autograd: opaque to torch.compile (no graph
# break, no unrolled loop: this loop unrolled is O(L / Q · log Q) slicing ops, which inductor spent over 25 minutes
# simplifying on a one-block model at 224²), run by inductor as they run eagerly.
@torch.library.custom_op("mixerzoo::chunked_selective_scan", mutates_args=())
def _chunked_scan_op(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    tile_elements: int | None,
    keep_states: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The S6 core ``y_t = Σ_n h_t[n] C_t[n]``, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` in chunks of Q tokens, in
    the token-major layout of ``_scan_forward``: y, and the states entering each chunk if ``keep_states`` (for the
    backward; else an empty tensor)."""
    y, starts = _scan_forward(u, dt, A, B, C, chunk_size, tile_elements, keep_states=keep_states)
    return y, starts if keep_states else u.new_empty(0)


@_chunked_scan_op.register_fake
def _(u, dt, A, B, C, chunk_size, tile_elements, keep_states):
    n_chunks = -(-u.shape[0] // min(chunk_size, u.shape[0]))
    return torch.empty_like(u), u.new_empty((n_chunks, *u.shape[1:], A.shape[-1]) if keep_states else (0,))


@torch.library.custom_op("mixerzoo::chunked_selective_scan_backward", mutates_args=())
def _chunked_scan_backward_op(
    dy: torch.Tensor,
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    starts: torch.Tensor,
    chunk_size: int,
    tile_elements: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (du, dΔ, dA, dB, dC) of ``_chunked_scan_op`` from only the states entering each chunk: walks the
    chunks from the last, recomputes the chunk's states from its entry state, and runs the adjoint recurrence

        g_t = C_t dy_t + exp(Δ_{t+1} A) g_{t+1}      (g carried into the previous chunk as exp(Δ_s A) g_s)

    giving dB_t = Σ_d g_t Δ_t u_t, d(Δu)_t = Σ_n g_t B_t, dC_t = Σ_d dy_t h_t, and through the decays
    w_t = g_t ⊙ exp(Δ_t A) h_{t-1}: dΔ_t += Σ_n w_t A, dA = Σ_{b,t} w_t Δ_t."""
    chunks, tiles, chunk = _blocks(u, A, chunk_size, tile_elements)
    dtu = dt * u
    du, ddt, dB, dC = (torch.empty_like(t) for t in (u, dt, B, C))
    dA = torch.zeros_like(A)
    ws = None
    for bs, gs in tiles:
        u_, dt_, dtu_, B_, C_, dy_ = (t[:, bs, gs] for t in (u, dt, dtu, B, C, dy))
        A_ = A[gs]
        ws = _workspace(ws, u, chunk, (*dt_.shape[1:], A.shape[-1]), ("x", "h", "g"))
        carry = torch.zeros_like(ws.h0)  # exp(Δ_s A) g_s of the chunk after this one
        for c, (s, e) in reversed(list(enumerate(chunks))):
            q = e - s
            ws.h0.copy_(starts[c, bs, gs])
            hs = ws.states(dt_, dtu_, A_, B_, s, e)
            a, g, dh = ws.a[: q + 1], ws.g[:q], ws.x[:q]  # the inputs x are not needed any more
            a[q].zero_()
            dC[s:e, bs, gs] = torch.matmul(dy_[s:e, :, :, None, :], hs).squeeze(-2)
            torch.mul(dy_[s:e, ..., None], C_[s:e, :, :, None, :], out=dh)
            dh[q - 1] += carry
            _linear_scan(a[1:], dh, g, ws.scratch, reverse=True)
            torch.mul(a[0], g[0], out=carry)
            dB[s:e, bs, gs] = torch.matmul(dtu_[s:e, :, :, None, :], g).squeeze(-2)
            ddtu = torch.einsum("qbgdn,qbgn->qbgd", g, B_[s:e])  # d(Δu)
            w = dh  # w_t = g_t ⊙ a_t h_{t-1}
            torch.mul(a[1:q], hs[:-1], out=w[1:])
            torch.mul(a[0], ws.h0, out=w[0])
            w.mul_(g)
            dA[gs] += torch.mul(w, dt_[s:e, ..., None], out=g).sum((0, 1))
            ddt[s:e, bs, gs] = torch.addcmul(w.mul_(A_).sum(-1), ddtu, u_[s:e])
            du[s:e, bs, gs] = ddtu * dt_[s:e]
    return du, ddt, dA, dB, dC


@_chunked_scan_backward_op.register_fake
def _(dy, u, dt, A, B, C, starts, chunk_size, tile_elements):
    return tuple(torch.empty_like(t) for t in (u, dt, A, B, C))


def _chunked_scan_setup_context(ctx, inputs, output) -> None:
    u, dt, A, B, C, chunk_size, tile_elements, _ = inputs
    ctx.save_for_backward(u, dt, A, B, C, output[1])
    ctx.blocks = chunk_size, tile_elements


def _chunked_scan_backward(ctx, dy, _dstarts):
    grads = _chunked_scan_backward_op(dy, *ctx.saved_tensors, *ctx.blocks)
    return (*grads, None, None, None)


_chunked_scan_op.register_autograd(_chunked_scan_backward, setup_context=_chunked_scan_setup_context)


@register_flop_formula(torch.ops.mixerzoo.chunked_selective_scan)
def _chunked_scan_flop(u_shape, dt_shape, A_shape, *args, **kwargs) -> int:
    """What ``FlopCounterMode`` counts for the op: the readout ``y_t = Σ_n h_t[n] C_t[n]``, one multiply-add per token,
    channel and state (a matmul in all but name). The state updates are declared by the module's ``scan_macs()``."""
    return 2 * math.prod(u_shape) * A_shape[-1]


def _chunked_scan(u, dt, A, B, C, chunk_size: int, tile_elements: int | None) -> torch.Tensor:
    """The chunked scan, keeping the chunk-entry states only when a gradient will be asked for."""
    keep_states = torch.is_grad_enabled() and any(t.requires_grad for t in (u, dt, A, B, C))
    return _chunked_scan_op(u, dt, A, B, C, chunk_size, tile_elements, keep_states)[0]


def _linear_scan_functional(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``_linear_scan`` (forward) without buffers, for graphs: returns h with h[t] = a[t] ⊙ h[t-1] + x[t]
    (h[-1] = 0) along dim 0, by the same pairwise tree: pairs (0, 1), (2, 3), ... composed, the half-length
    recurrence solved recursively (the odd steps), the even steps filled in from their solved predecessors, and
    the two halves interleaved by a stack."""
    m = x.shape[0]
    if m == 1:
        return x
    p = m // 2
    lo, hi = slice(0, 2 * p, 2), slice(1, 2 * p, 2)
    h_odd = _linear_scan_functional(a[hi] * a[lo], torch.addcmul(x[hi], a[hi], x[lo]))  # steps 1, 3, ..., 2p-1
    h_even = torch.cat([x[:1], torch.addcmul(x[2::2], a[2::2], h_odd[: (m - 1) // 2])])  # steps 0, 2, 4, ...
    h = torch.stack([h_even[:p], h_odd], dim=1).flatten(0, 1)  # (2p, ...)
    return h if m % 2 == 0 else torch.cat([h, h_even[p:]])


def _scan_traced(u, dt, A, B, C, chunk_size: int) -> torch.Tensor:
    """The chunked scan as one ``scan`` op over chunks (module docstring), same layout as ``_scan_forward``:
    u, Δ (L, b, G, Dg); A (G, Dg, N); B, C (L, b, G, N) -> y (L, b, G, Dg)."""
    from torch._higher_order_ops.scan import scan, scan_op

    length = u.shape[0]
    q = min(chunk_size, length)
    n_chunks = -(-length // q)
    pad = n_chunks * q - length

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (L, ...) -> (n_chunks, Q, ...), padded with zeros
        return F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)).unflatten(0, (n_chunks, q))

    def chunk_step(h0, dt_c, dtu_c, B_c, C_c, A):  # (b, G, Dg, N); (Q, b, G, Dg) x2; (Q, b, G, N) x2; (G, Dg, N)
        a = torch.exp(dt_c[..., None] * A)  # (Q, b, G, Dg, N); Δ ≥ 0, A < 0: decays in [0, 1]
        x = dtu_c[..., None] * B_c[:, :, :, None, :]  # (Q, b, G, Dg, N)
        x = torch.cat([torch.addcmul(x[:1], a[:1], h0[None]), x[1:]])  # the entry state folded into token 0
        hs = _linear_scan_functional(a, x)  # (Q, b, G, Dg, N)
        return [hs[-1].clone(), (hs * C_c[:, :, :, None, :]).sum(-1)]  # y_t = Σ_n h_t[n] C_t[n]

    h0 = u.new_zeros((*u.shape[1:], A.shape[-1]))  # (b, G, Dg, N)
    xs = [chunked(dt), chunked(dt * u), chunked(B), chunked(C)]
    if torch.compiler.is_dynamo_compiling():  # torch.compile, strict export: dynamo traces the public API
        _, y = scan(lambda h, chunk: tuple(chunk_step(h, *chunk, A)), h0, xs)
    else:  # non-strict export: the op itself, traced by make_fx at the real shapes
        _, y = scan_op(chunk_step, [h0], xs, (A,))
    return y.flatten(0, 1)[:length]  # (L, b, G, Dg)


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
    chunk_size: int = 64,
    tile_elements: int | None = None,
) -> torch.Tensor:
    """The chunked S6 scan (module docstring), exact, in u's dtype. Runs the ``mixerzoo::chunked_selective_scan``
    custom op, which keeps the chunk-entry states when a gradient is needed and nothing but the running state
    otherwise. ``chunk_size``: tokens per chunk (Q); ``tile_elements``: the state elements per chunk above which
    batch entries / groups are scanned in separate blocks (default ``TILE_ELEMENTS`` for the device)."""
    batch, dim, length = u.shape
    B, C = grouped_bc(B, C, dim)
    groups, n = B.shape[1], B.shape[2]
    if chunk_size < 1:
        raise ValueError(f"selective scan: chunk_size must be positive, got {chunk_size}.")
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    token_major = (length, batch, groups, dim // groups)
    args = (  # u, Δ as token-major views of their channels-first memory (read broadcast over N: no copy needed)
        u.permute(2, 0, 1).reshape(token_major),  # (L, b, G, Dg)
        delta.permute(2, 0, 1).reshape(token_major),
        A.reshape(groups, dim // groups, n),  # (G, Dg, N)
        B.permute(3, 0, 1, 2).contiguous(),  # (L, b, G, N), N innermost for the per-chunk products
        C.permute(3, 0, 1, 2).contiguous(),
    )
    if torch.compiler.is_exporting():  # torch.export (and so ONNX): a graph of standard ops
        y = _scan_traced(*args, chunk_size)
    else:
        y = _chunked_scan(*args, chunk_size, tile_elements)
    y = y.reshape(length, batch, dim).permute(1, 2, 0).contiguous()  # (b, D, L)
    return _finish(y, u, D, z)


# the optional kernels (module, name): mamba_ssm's imports where mamba-ssm was built for CUDA (from 2.3 on, with
# MAMBA_KEEP_CUDA_BUILD), the Triton one where the triton package imports
_KERNELS = {
    "fused": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "triton": (f"{__package__}.selective_scan_triton", "selective_scan_triton"),
}


def _kernel(name: str):
    """The optional kernel ``name`` (``"fused"``: mamba_ssm's; ``"triton"``), or None where it does not import."""
    return optional_kernel(*_KERNELS[name])


def _importable(name: str) -> bool:
    """Whether the kernel ``name`` imports: a constant for ``torch.compile`` (``ops.kernel_importable``)."""
    return kernel_importable(*_KERNELS[name])


def fused_selective_scan_available() -> bool:
    return torch.cuda.is_available() and _importable("fused")


def triton_selective_scan_available() -> bool:
    return torch.cuda.is_available() and _importable("triton")


@torch.compiler.disable
def _selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return _kernel("fused")(
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


@torch.compiler.disable
def _selective_scan_triton(*args):
    return _kernel("triton")(*args)


def _triton_runs_on(u: torch.Tensor) -> bool:
    """Whether the Triton kernels take u: on CUDA, or on the CPU in the Triton interpreter (tests)."""
    if not _importable("triton"):
        return False
    from .selective_scan_triton import INTERPRETED

    return u.is_cuda or INTERPRETED


SCAN_BACKENDS = (*BACKENDS, "triton")


def _choose(backend: str, u: torch.Tensor, A: torch.Tensor):
    """The scan function for ``backend`` (module docstring: dispatch)."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {backend!r}; use one of {', '.join(SCAN_BACKENDS)}.")
    if backend == "triton":
        if not _triton_runs_on(u):
            triton = "importable" if _importable("triton") else "not importable"
            raise RuntimeError(
                "backend='triton' needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1) and triton; got "
                f"{u.device.type} tensors, triton {triton}"
            )
        return _selective_scan_triton
    fusable = u.is_cuda and A.shape[-1] <= MAX_FUSED_D_STATE and _importable("fused")
    mamba_ssm = "importable" if _importable("fused") else "not importable"
    needs = (
        "CUDA tensors, d_state <= 256 and mamba_ssm (selective_scan_fn); got "
        f"{u.device.type} tensors, d_state {A.shape[-1]}, mamba_ssm {mamba_ssm}"
    )
    if use_fused(backend, "selective-scan", fusable, needs):
        return _selective_scan_fused
    # "auto" never picks Triton: its kernels have passed the Triton interpreter and sm_90 compilation but not yet a
    # GPU run (tools/gpu_check.py's selective_scan row); until they do, it is the explicit backend="triton"
    return selective_scan_torch


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
    scan = _choose(backend, u, A)
    dtype = u.dtype
    compute = compute_dtype(dtype)
    with autocast_off(u.device.type):
        args = [None if t is None else t.to(compute) for t in (u, delta, A, B, C, D, z, delta_bias)]
        out = scan(*args, delta_softplus)
    return out.to(dtype)
