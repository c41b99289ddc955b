"""The Mamba-1 selective scan (S6) in chunks of Q tokens, exact, in pure PyTorch: the CPU path, and the GPU path
where ``mamba_ssm`` is absent (semantics in ``selective_scan_reference``; the dispatch in ``selective_scan``).

It works token-major: u, Δ as (L, b, G, D/G) views of their channels-first memory, B, C copied to (L, b, G, N).
Per chunk, with a_t = exp(Δ_t A) and x_t = Δ_t u_t B_t, it forms the states h_t = a_t h_{t-1} + x_t from the state
entering the chunk and reads out y_t = Σ_n h_t C_t; the last state enters the next chunk. The chunk step is one of
two interchangeable kernels:

- ``compiled`` (the CPU default): the step over ``STEP`` tokens written as the plain recurrence, one token after
  the other, Δ's bias and softplus included, and compiled by ``torch.compile`` (inductor: C++ with vector
  instructions on CPU, Triton on CUDA) into one kernel that keeps each (channel, state) row's h in registers across
  the STEP tokens and reads Δ, u, B, C once: neither Δ after softplus nor any (Q, b, D, N) tensor is written
  (ATen's softplus alone, scalar log1p on CPU, cost more than this whole kernel). The (batch, group) pairs are
  merged into rows M; M and D/G are dynamic, so it is compiled once per dtype and softplus setting; STEP is fixed,
  the sequence zero-padded to a multiple of it (u = 0: padded tokens, after every real one, add no input). It is
  called once per STEP tokens: the loop over the sequence stays in Python, so nothing is unrolled over L. Its
  backward is a second compiled step written out (the states recomputed forwards, the adjoint backwards, in the same
  kernel), run piece by piece from the last with the gradient at each entry state carried backwards. It needs a
  C++ compiler at run time (inductor's ``cpp.cxx``, g++ or clang++; nothing is compiled at install time); where
  there is none, ``compiled_scan_available`` gives the reason and ``selective_scan(backend="auto")`` warns once and
  takes ``tree``. Compiling takes about a minute per variant on one idle core (inductor caches it on disk).
- ``tree``: the Q states of a chunk at once, in buffers (Q, b, G, D/G, N) reused by every chunk, by a pairwise tree
  reduction (``_linear_scan``: 2 log₂ Q whole-slice levels, ~3 Q multiply-adds), the readout as one einsum.

Both run inside the custom op ``mixerzoo::chunked_selective_scan`` (opaque to ``torch.compile``, so a compiled model
keeps this kernel: the op is its declared boundary), which also applies Δ's bias and softplus, and has a
registered backward. Training keeps only the op's inputs (u, the raw Δ, A, B, C, the bias) and the state entering
each chunk ((L / Q) b D N, not L b D N); the backward walks the chunks from the last, recomputes each chunk's
states from its entry state and solves the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1}; Δ after bias and
softplus is recomputed, not kept. Without gradients only the running state is kept. Large batches are scanned in
independent (batch, group) blocks of ≤ ``TILE_ELEMENTS`` state elements per chunk (cache-sized on CPU; on CUDA a
bound on the workspace).

Stability in float32: every exponent is Δ_t A ≤ 0 (Δ ≥ 0 after softplus, A < 0), so every decay is in [0, 1]; both
steps only multiply decays together and add inputs, so no exp of a positive (cumulative) sum, no division and no
difference of cumulative sums ever appears: products of decays can only underflow towards 0, exactly where the true
decay is negligible. (Segment-sum decays exp(A (S_t - S_τ)) would be stable too, but with a different A per (d, n)
they need Q² / 2 exps per (d, n) and chunk instead of Q: the SSD trick pays only for Mamba-2's scalar A per head.)

For ``torch.export`` (and so ONNX), ``_scan_traced`` replaces the op: the same chunked scan as standard ops, the
chunk loop one ``scan`` higher-order op (``torch._higher_order_ops``, a prototype API) whose body is one chunk, so
the graph has no break and its size does not grow with L (ONNX export gives a ``Scan`` node). The body is
functional: decays and inputs in bulk, the entry state folded in, the pairwise tree (``_linear_scan_functional``),
the readout einsum. L is padded to a multiple of Q with Δ = 0. Gradients come from the op's own autograd.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from .selective_scan_reference import finish, grouped_bc

__all__ = ["RECOMPILE_LIMIT", "STEP", "compiled_scan_available", "selective_scan_torch"]

STEP = 8  # tokens per call of the compiled step: its unrolled length (compile time grows with it: 16 took 1.8x as long
# to compile as 8 for vim2_t, cold cache, with the same run time within noise)
# variants of each compiled step one process may build (dtype x softplus x the sizes of 1 dynamo specialises, e.g.
# one row or one channel per group): above dynamo's default of 8, which with fullgraph=True is a hard error
RECOMPILE_LIMIT = 64
# State elements per chunk and block: on CPU a block stays in cache; on CUDA it bounds the workspace.
TILE_ELEMENTS = {"cpu": 2**20, "default": 2**26}


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


def _softplus_grad(x: torch.Tensor) -> torch.Tensor:
    """softplus'(x) as torch computes it (threshold 20: the identity above)."""
    return torch.where(x > 20.0, 1.0, torch.sigmoid(x))


def _chunk_step(h0, delta, u, B, C, A, bias, softplus: bool):
    """``STEP`` tokens of the recurrence one after the other, on rows m = (batch entry, group) (compiled into one
    kernel by ``_step``), Δ = softplus(Δ + bias) (as asked) formed in the kernel: h0 (M, Dg, N); Δ (raw), u
    (STEP, M, Dg); B, C (STEP, M, N); A (M, Dg, N); bias (M, Dg) -> y (STEP, M, Dg), h_last (M, Dg, N)."""
    h, ys = h0, []
    for t in range(delta.shape[0]):
        dt = F.softplus(delta[t] + bias) if softplus else delta[t] + bias
        h = torch.exp(dt[:, :, None] * A) * h + (dt * u[t])[:, :, None] * B[t, :, None, :]  # decays in [0, 1]
        ys.append((h * C[t, :, None, :]).sum(-1))  # y_t = Σ_n h_t[n] C_t[n]
    return torch.stack(ys), h


def _chunk_step_backward(h0, delta, u, B, C, A, bias, softplus: bool, dy, carry):
    """The gradients of ``_chunk_step`` given dy (STEP, M, Dg) at y and ``carry`` at h_last: the states recomputed
    forwards, then the adjoint g_t = (carry from t + 1) + C_t dy_t backwards, handing a_t g_t to token t - 1, with
    dC_t = Σ_d dy_t h_t, dB_t = Σ_d g_t Δ_t u_t, d(Δu)_t = Σ_n g_t B_t (so du_t = d(Δu)_t Δ_t), and through the decay
    w_t = g_t a_t h_{t-1}: dΔ_t = Σ_n w_t A + d(Δu)_t u_t, then through softplus; dA_m = Σ_t w_t Δ_t (per row; the
    caller sums the rows of a group). Returns (dh0, dΔ (raw: also the bias' per token), du, dB, dC, dA)."""
    steps = delta.shape[0]
    raw = [delta[t] + bias for t in range(steps)]
    dts = [F.softplus(x) if softplus else x for x in raw]
    decays = [torch.exp(dt[:, :, None] * A) for dt in dts]
    hs = [h0]
    for t in range(steps):
        hs.append(decays[t] * hs[-1] + (dts[t] * u[t])[:, :, None] * B[t, :, None, :])
    g, dA = carry, torch.zeros_like(A)
    ddelta, du, dB, dC = ([None] * steps for _ in range(4))
    for t in reversed(range(steps)):
        g = g + dy[t, :, :, None] * C[t, :, None, :]  # the gradient at h_t
        dC[t] = (dy[t, :, :, None] * hs[t + 1]).sum(1)
        dB[t] = (g * (dts[t] * u[t])[:, :, None]).sum(1)
        ddtu = (g * B[t, :, None, :]).sum(-1)
        du[t] = ddtu * dts[t]
        w = g * decays[t] * hs[t]
        ddt = (w * A).sum(-1) + ddtu * u[t]
        ddelta[t] = ddt * _softplus_grad(raw[t]) if softplus else ddt
        dA = dA + w * dts[t][:, :, None]
        g = decays[t] * g  # the gradient at h_{t-1}
    return g, torch.stack(ddelta), torch.stack(du), torch.stack(dB), torch.stack(dC), dA


_compiled_step = torch.compile(_chunk_step, fullgraph=True)
_compiled_step_backward = torch.compile(_chunk_step_backward, fullgraph=True)
# the sizes M and Dg of h0, Δ, u, B, C, A, bias (then the backward's dy, carry), marked dynamic
_DYNAMIC = ((0, 1), (1, 2), (1, 2), (1,), (1,), (0, 1), (0, 1))
_DYNAMIC_GRADS = ((1, 2), (0, 1))


def _step(inputs: tuple[torch.Tensor, ...], softplus: bool, grads: tuple[torch.Tensor, ...] = ()):
    """The compiled step on (h0, Δ, u, B, C, A, bias), or its backward given (dy, carry), with the row and channel
    sizes M, Dg marked dynamic: one compilation per dtype and softplus for every shape (sizes of 1 are
    specialised by dynamo). The tensors go in detached and autocast is off: dynamo guards on each tensor's
    requires_grad and on the autocast state, so a caller's autograd or autocast would otherwise compile the step
    again (four times as often in a mixed-precision training step)."""
    inputs, grads = tuple(t.detach() for t in inputs), tuple(t.detach() for t in grads)
    for t, dims in zip((*inputs, *grads), _DYNAMIC + _DYNAMIC_GRADS, strict=False):
        torch._dynamo.maybe_mark_dynamic(t, dims)
    no_autocast = torch.autocast(inputs[0].device.type, enabled=False)
    with torch.no_grad(), no_autocast, torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        if grads:
            return _compiled_step_backward(*inputs, softplus, *grads)
        return _compiled_step(*inputs, softplus)


@functools.cache
def compiled_scan_available(device_type: str = "cpu") -> str | None:
    """Why the compiled step cannot be built on ``device_type`` (no C++ compiler for inductor on CPU, no Triton on a
    GPU), or None where it can. Asked once per process and device type."""
    try:
        if device_type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        else:
            import triton  # noqa: F401
    except Exception as error:  # InvalidCxxCompiler, ImportError, ...: whatever stops inductor from building
        return f"{type(error).__name__}: {error}"
    return None


def _chunk_length(length: int, chunk_size: int, compiled: bool) -> int:
    """Tokens per chunk (between kept states): ``chunk_size``, at most the sequence; for the compiled step rounded
    up to a multiple of ``STEP``."""
    chunk = min(chunk_size, length)
    return -(-chunk // STEP) * STEP if compiled else chunk


def _row_blocks(rows: int, piece_elements: int, budget: int) -> list[slice]:
    """Rows in near-equal blocks of ≤ ``budget`` state elements per piece where possible, never a block of one row
    out of several (the compiled step would be specialised for it)."""
    n_blocks = max(1, min(-(-rows * piece_elements // budget), rows // 2))
    size = -(-rows // n_blocks)
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def _pieces(s: int, e: int) -> list[tuple[int, int]]:
    """The STEP-token pieces of tokens s..e-1 (the last one may run past e: its inputs are zero-padded)."""
    return [(p, p + STEP) for p in range(s, e, STEP)]


def _rows(t: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
    """A token-major tensor (L, b, G, X) as a contiguous (L', M, X) with (batch, group) merged into rows m (a block
    of them if given) and L zero-padded to L' = a multiple of ``STEP``: every piece the compiled step sees has the
    same layout, so it is compiled once. Padded tokens have u = 0 (no input) and dy = 0; they come after every real
    token, so whatever their decay, they change no output, no gradient and no state that is kept."""
    length = t.shape[0]
    t = t.flatten(1, 2)
    t = t if rows is None else t[:, rows]
    out = t.new_zeros((-(-length // STEP) * STEP, *t.shape[1:]))
    out[:length] = t
    return out


def _row_params(A: torch.Tensor, bias: torch.Tensor | None, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (G, Dg, N) and the Δ bias (G, Dg) (zeros without one) repeated over the batch: (M, Dg, N), (M, Dg)."""
    bias = torch.zeros_like(A[..., 0]) if bias is None else bias
    return A.repeat(batch, 1, 1), bias.repeat(batch, 1)


def _compiled_forward(u, delta, A, B, C, bias, softplus: bool, chunk_size: int, keep_states: bool):
    """The chunked scan by the compiled step, over all rows at once (the state of a row stays in registers):
    token-major u, raw Δ (L, b, G, Dg); A (G, Dg, N); B, C (L, b, G, N); bias (G, Dg) or None -> y (L, b, G, Dg) and
    the states entering each chunk (n_chunks, b, G, Dg, N) if ``keep_states`` (else None)."""
    length, batch, groups, dg = u.shape
    delta_, u_, B_, C_ = (_rows(t) for t in (delta, u, B, C))  # (L', M, Dg) / (L', M, N)
    A_, bias_ = _row_params(A, bias, batch)
    chunks = _chunks(length, _chunk_length(length, chunk_size, compiled=True))
    y = torch.empty_like(u_)
    starts = u.new_empty((len(chunks), *A_.shape)) if keep_states else None
    h = torch.zeros_like(A_)
    for c, (s, e) in enumerate(chunks):
        if keep_states:
            starts[c] = h
        for p, q in _pieces(s, e):
            y[p:q], h = _step((h, delta_[p:q], u_[p:q], B_[p:q], C_[p:q], A_, bias_), softplus)
    if keep_states:
        starts = starts.view(len(chunks), batch, groups, dg, A.shape[-1])
    return y[:length].view(u.shape), starts


def _compiled_backward(dy, u, delta, A, B, C, bias, starts, softplus: bool, chunk_size: int, tile_elements):
    """(du, dΔ (raw), dA, dB, dC) by the compiled step's backward, chunk by chunk from the last: the entry state of
    each STEP-token piece recomputed from the chunk's, then each piece's backward from the last, the gradient at its
    entry state carried into the piece before. Rows in cache-sized blocks."""
    length, batch, groups, dg = u.shape
    n = A.shape[-1]
    A_, bias_ = _row_params(A, bias, batch)
    starts = starts.reshape(starts.shape[0], -1, dg, n)
    chunks = _chunks(length, _chunk_length(length, chunk_size, compiled=True))
    grads = [u.new_empty((length, batch * groups, size)) for size in (dg, dg, n, n)]  # dΔ, du, dB, dC
    dA = torch.zeros_like(A_)
    budget = tile_elements or TILE_ELEMENTS.get(u.device.type, TILE_ELEMENTS["default"])
    for m in _row_blocks(A_.shape[0], STEP * dg * n, budget):
        delta_, u_, B_, C_, dy_ = (_rows(t, m) for t in (delta, u, B, C, dy))
        A_m, bias_m = A_[m].contiguous(), bias_[m].contiguous()
        carry = torch.zeros_like(A_m)  # the gradient at the state leaving the chunk
        for c, (s, e) in reversed(list(enumerate(chunks))):
            entries = [starts[c, m].contiguous()]
            for p, q in _pieces(s, e)[:-1]:
                inputs = (entries[-1], delta_[p:q], u_[p:q], B_[p:q], C_[p:q], A_m, bias_m)
                entries.append(_step(inputs, softplus)[1])
            for (p, q), h in zip(reversed(_pieces(s, e)), reversed(entries), strict=True):
                inputs = (h, delta_[p:q], u_[p:q], B_[p:q], C_[p:q], A_m, bias_m)
                carry, *piece = _step(inputs, softplus, (dy_[p:q], carry))
                e_ = min(q, length)
                for out, grad in zip(grads, piece, strict=False):
                    out[p:e_, m] = grad[: e_ - p]
                dA[m] += piece[4]
    ddelta, du, dB, dC = (g.view(*u.shape[:3], g.shape[-1]) for g in grads)
    return du, ddelta, dA.view(batch, *A.shape).sum(0), dB, dC


def _delta(delta: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """Δ in the token-major layout (L, b, G, Dg), the bias (G, Dg) added and softplus applied where asked, computed
    in the caller's channels-first memory order (b, G, Dg, L) (elementwise ops on the token-major view of that
    memory fall off the vectorised path)."""
    channels_first = delta.permute(1, 2, 3, 0)  # (b, G, Dg, L)
    if bias is not None:
        channels_first = channels_first + bias[..., None]
    if softplus:
        channels_first = F.softplus(channels_first)
    return channels_first.permute(3, 0, 1, 2)


def _scan_forward(u, dt, A, B, C, chunk_size: int, tile_elements: int | None, keep_states: bool):
    """Token-major chunked scan: u, Δ (L, b, G, Dg) (Δ after bias and softplus); A (G, Dg, N); B, C (L, b, G, N)
    -> y (L, b, G, Dg), and the state entering each chunk (n_chunks, b, G, Dg, N) if ``keep_states`` (else None)."""
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


def _tree_backward(dy, u, dt, A, B, C, starts, chunk_size: int, tile_elements: int | None):
    """(dΔ from the decays, d(Δu), dA, dB, dC) by the tree, chunk by chunk from the last: the chunk's states
    recomputed into the workspace, the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} by the reverse tree (carried into
    the previous chunk as a_s g_s), dB_t = Σ_d g_t Δ_t u_t, d(Δu)_t = Σ_n g_t B_t, dC_t = Σ_d dy_t h_t, and through
    the decays w_t = g_t ⊙ a_t h_{t-1}: dΔ_t = Σ_n w_t A, dA = Σ_{b,t} w_t Δ_t."""
    chunks, tiles, chunk = _blocks(u, A, chunk_size, tile_elements)
    dtu = dt * u
    ddt, ddtu, dB, dC = (torch.empty_like(t) for t in (dt, dtu, B, C))
    dA = torch.zeros_like(A)
    ws = None
    for bs, gs in tiles:
        dt_, dtu_, B_, C_, dy_ = (t[:, bs, gs] for t in (dt, dtu, B, C, dy))
        A_ = A[gs]
        ws = _workspace(ws, u, chunk, (*dt_.shape[1:], A.shape[-1]), ("x", "h", "g"))
        carry = torch.zeros_like(ws.h0)  # a_s g_s of the chunk after this one
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
            ddtu[s:e, bs, gs] = torch.einsum("qbgdn,qbgn->qbgd", g, B_[s:e])
            w = dh  # w_t = g_t ⊙ a_t h_{t-1}
            torch.mul(a[1:q], hs[:-1], out=w[1:])
            torch.mul(a[0], ws.h0, out=w[0])
            w.mul_(g)
            dA[gs] += torch.mul(w, dt_[s:e, ..., None], out=g).sum((0, 1))
            ddt[s:e, bs, gs] = w.mul_(A_).sum(-1)
    return ddt, ddtu, dA, dB, dC


# The chunked scan as a pair of custom ops (forward, backward) with autograd: opaque to torch.compile (no graph break,
# no unrolled loop: the tree loop unrolled is O(L / Q · log Q) slicing ops, which inductor spent over 25 minutes
# simplifying on a one-block model at 224²), run by inductor as they run eagerly.
@torch.library.custom_op("mixerzoo::chunked_selective_scan", mutates_args=())
def _chunked_scan_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    chunk_size: int,
    tile_elements: int | None,
    keep_states: bool,
    compiled: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The S6 core ``y_t = Σ_n h_t[n] C_t[n]``, ``h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t`` with Δ = softplus(Δ +
    bias) (as asked), in chunks of Q tokens, token-major (``_scan_forward``): y, and the states entering each chunk
    if ``keep_states`` (for the backward; else an empty tensor)."""
    with torch.no_grad():
        if compiled:
            y, starts = _compiled_forward(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size, keep_states)
        else:
            dt = _delta(delta, delta_bias, delta_softplus)
            y, starts = _scan_forward(u, dt, A, B, C, chunk_size, tile_elements, keep_states)
    # contiguous outputs, as the fake kernel says (compiled graphs rely on the strides it reports)
    return y.contiguous(), starts.contiguous() if keep_states else u.new_empty(0)


@_chunked_scan_op.register_fake
def _(u, delta, A, B, C, delta_bias, delta_softplus, chunk_size, tile_elements, keep_states, compiled):
    n_chunks = -(-u.shape[0] // _chunk_length(u.shape[0], chunk_size, compiled))
    return u.new_empty(u.shape), u.new_empty((n_chunks, *u.shape[1:], A.shape[-1]) if keep_states else (0,))


@torch.library.custom_op("mixerzoo::chunked_selective_scan_backward", mutates_args=())
def _chunked_scan_backward_op(
    dy: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    delta_bias: torch.Tensor | None,
    starts: torch.Tensor,
    delta_softplus: bool,
    chunk_size: int,
    tile_elements: int | None,
    compiled: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (du, dΔ, dA, dB, dC, dΔ_bias) of ``_chunked_scan_op`` from only the states entering each chunk:
    walks the chunks from the last, recomputes the chunk's states from its entry state and runs the adjoint
    recurrence (``_tree_backward``, or ``_compiled_backward``: the compiled step's explicit backward), the adjoint of
    each chunk's entry state carried into the previous chunk. dΔ_bias is empty without a bias."""
    if compiled:
        settings = (delta_softplus, chunk_size, tile_elements)
        du, ddt, dA, dB, dC = _compiled_backward(dy, u, delta, A, B, C, delta_bias, starts, *settings)
    else:
        dt = _delta(delta, delta_bias, delta_softplus)
        ddt, ddtu, dA, dB, dC = _tree_backward(dy, u, dt, A, B, C, starts, chunk_size, tile_elements)
        du = ddtu * dt
        ddt.addcmul_(ddtu, u)  # dΔ = (through the decays) + d(Δu) u
        if delta_softplus:  # through softplus (torch's own derivative, threshold included)
            ddt = torch.ops.aten.softplus_backward(ddt, _delta(delta, delta_bias, False), 1.0, 20.0)
    dbias = ddt.sum((0, 1)) if delta_bias is not None else ddt.new_empty(0)
    return tuple(t.contiguous() for t in (du, ddt, dA, dB, dC, dbias))


@_chunked_scan_backward_op.register_fake
def _(dy, u, delta, A, B, C, delta_bias, starts, delta_softplus, chunk_size, tile_elements, compiled):
    dbias = delta_bias.new_empty(delta_bias.shape) if delta_bias is not None else delta.new_empty(0)
    return (*(t.new_empty(t.shape) for t in (u, delta, A, B, C)), dbias)


def _chunked_scan_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, delta_bias, delta_softplus, chunk_size, tile_elements, _, compiled = inputs
    ctx.save_for_backward(u, delta, A, B, C, delta_bias, output[1])
    ctx.settings = delta_softplus, chunk_size, tile_elements, compiled


def _chunked_scan_backward(ctx, dy, _dstarts):
    u, delta, A, B, C, delta_bias, starts = ctx.saved_tensors
    du, ddelta, dA, dB, dC, dbias = _chunked_scan_backward_op(dy, u, delta, A, B, C, delta_bias, starts, *ctx.settings)
    return du, ddelta, dA, dB, dC, None if delta_bias is None else dbias, None, None, None, None, None


_chunked_scan_op.register_autograd(_chunked_scan_backward, setup_context=_chunked_scan_setup_context)


@register_flop_formula(torch.ops.mixerzoo.chunked_selective_scan)
def _chunked_scan_flop(u_shape, delta_shape, A_shape, *args, **kwargs) -> int:
    """What ``FlopCounterMode`` counts for the op: the readout ``y_t = Σ_n h_t[n] C_t[n]``, one multiply-add per token,
    channel and state (a matmul in all but name). The state updates are declared by the module's ``scan_macs()``."""
    return 2 * math.prod(u_shape) * A_shape[-1]


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
    compiled: bool = False,
) -> torch.Tensor:
    """The chunked S6 scan (module docstring), exact, in u's dtype. Runs the ``mixerzoo::chunked_selective_scan``
    custom op, which keeps the chunk-entry states when a gradient is needed and nothing but the running state
    otherwise. ``chunk_size``: tokens per chunk (Q); ``tile_elements``: the state elements per chunk above which
    batch entries / groups are scanned in separate blocks (default ``TILE_ELEMENTS`` for the device);
    ``compiled``: the chunk step compiled by inductor (``compiled_scan_available`` says whether it can run) instead
    of the tree."""
    batch, dim, length = u.shape
    B, C = grouped_bc(B, C, dim)
    groups, n = B.shape[1], B.shape[2]
    if chunk_size < 1:
        raise ValueError(f"selective scan: chunk_size must be positive, got {chunk_size}.")
    token_major = (length, batch, groups, dim // groups)
    u_, delta_ = (t.permute(2, 0, 1).reshape(token_major) for t in (u, delta))  # (L, b, G, Dg) views
    A_ = A.reshape(groups, dim // groups, n)  # (G, Dg, N)
    B_, C_ = (t.permute(3, 0, 1, 2).contiguous() for t in (B, C))  # (L, b, G, N), N innermost
    bias = None if delta_bias is None else delta_bias.reshape(groups, dim // groups)
    if torch.compiler.is_exporting():  # torch.export (and so ONNX): a graph of standard ops
        y = _scan_traced(u_, _delta(delta_, bias, delta_softplus), A_, B_, C_, chunk_size)
    else:
        inputs = (u_, delta_, A_, B_, C_, bias)
        keep_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        settings = (delta_softplus, chunk_size, tile_elements, keep_states, compiled)
        y = _chunked_scan_op(*inputs, *settings)[0]
    y = y.reshape(length, batch, dim).permute(1, 2, 0).contiguous()  # (b, D, L)
    return finish(y, u, D, z)
