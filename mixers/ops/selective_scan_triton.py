"""The Mamba-1 selective scan (S6) as Triton kernels: a GPU path that needs no compiled extension (Triton compiles
the kernels at first use). Same signature and semantics as ``selective_scan_torch`` (``selective_scan_chunked.py``):

    Δ_t = softplus(Δ_t + Δ_bias) (if asked),    a_t = exp(Δ_t[d] A[d, n])
    h_t[d, n] = a_t h_{t-1}[d, n] + Δ_t[d] u_t[d] B_t[g(d), n]          h_{-1} = 0
    y_t[d]    = (Σ_n h_t[d, n] C_t[g(d), n] + D[d] u_t[d]) ⊙ SiLU(z_t[d])    (D, z optional)

Shapes (mamba_ssm's, channels first): u, Δ, z (b, D, L); A (D, N); B, C (b, N, L) or grouped (b, G, N, L), channel d
in group g(d) = d // (D / G); D, Δ_bias (D,). Output (b, D, L) in u's dtype.

Forward kernel: one program per (batch entry, group, block of ``block_d`` channels of the group). It walks the L
tokens in order with the state h (block_d, N) in registers, and fuses everything the torch path does around its
scan (Δ bias, softplus, the D skip and the z gate), so each input is read once and y written once. Loads and
stores run in float32 (float64 for float64 input); half-precision inputs are cast on load. When a gradient will be
asked for it also writes the state entering every chunk of ``chunk_size`` tokens: (b, D, ⌈L / Q⌉, N) float32,
(N / Q) of u's size, as the torch path keeps.

Backward kernel, same grid, walking the chunks from the last. The states are recomputed, not reversed: running the
recurrence backwards, h_{t-1} = (h_t - Δ_t u_t B_t) / a_t, divides by decays that underflow to 0 (an exp of a large
positive sum in disguise), so instead each chunk's states are recomputed forwards from the stored entry state into
a per-program scratch buffer (Q + 1 states of (block_d, N), float32), then read back in reverse while the adjoint

    g_t = C_t dy_t + a_{t+1} g_{t+1}        (dy: the gradient at y before the D skip, after the gate)

is carried in registers. Per token: dC_t = Σ_d dy_t h_t, dB_t = Σ_d g_t Δ_t u_t, d(Δu)_t = Σ_n g_t B_t, and
through the decay w_t = g_t a_t h_{t-1}: dΔ_t += Σ_n w_t A, dA += w_t Δ_t; then softplus' (a sigmoid) for Δ's input
and Δ_bias, Σ_t for D and Δ_bias. As in the torch path, every exponent is Δ A ≤ 0 for Δ ≥ 0 and A < 0: only decays
in [0, 1] are formed and multiplied, nothing can overflow and nothing is divided. dB and dC sum over the channel
blocks of a group with ``atomic_add`` into float32 (so their rounding order, like mamba_ssm's, is not
deterministic); dA, dD and dΔ_bias are written per batch entry and summed here (deterministic).

Memory: the scratch is (programs, Q + 1, block_d, N) ≈ (Q + 1) b D N float32, alive during the backward only; Q is
``chunk_size`` or, for shorter sequences, L rounded up to a power of two.

Status: verified in the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) against ``selective_scan_ref``, and
compiled to sm_90 machine code by ``triton.compile`` in the tests (no GPU needed for that); not yet run or timed on
a GPU (``tests/test_cuda.py`` and ``tools/gpu_check.py``'s ``selective_scan`` row do both). Block sizes and warp
counts are untuned guesses (``block_d`` 16 with N 16 on 2 warps compiles to 87 / 186 registers per thread forward /
backward, no spills).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from .selective_scan_reference import grouped_bc

__all__ = ["INTERPRETED", "selective_scan_triton"]


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)  # torch's threshold: x above 20


@triton.jit
def _load_delta(delta_ptr, mask_d, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr):
    """Δ_t of a block of channels: (the input plus the bias, Δ_t after the optional softplus), both (BLOCK_D,)."""
    dt_in = tl.load(delta_ptr, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        dt_in += bias
    dt = _softplus(dt_in) if SOFTPLUS else dt_in
    return dt_in, dt


@triton.jit
def _step(h, dt, u, A, B):
    """One state update h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, (BLOCK_D, BLOCK_N): the forward and the backward's
    recomputation share it, so their states cannot drift apart."""
    return tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * B[None, :]


@triton.jit
def _forward_kernel(
    u_ptr,  # (b, D, L)
    delta_ptr,  # (b, D, L)
    A_ptr,  # (D, N)
    B_ptr,  # (b, G, N, L)
    C_ptr,  # (b, G, N, L)
    D_ptr,  # (D,)
    z_ptr,  # (b, D, L)
    bias_ptr,  # (D,)
    y_ptr,  # (b, D, L) out
    states_ptr,  # (b, D, n_chunks, N) out, in ACC: the state entering each chunk
    length,
    dim,
    groups,
    d_state,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    STORE_STATES: tl.constexpr,
    ACC: tl.constexpr,  # compute dtype: float32, or float64 for float64 input
):
    pid = tl.program_id(0).to(tl.int64)  # batch * groups + group
    batch, group = pid // groups, pid % groups
    dim_per_group = dim // groups
    local_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = local_d < dim_per_group
    d = group * dim_per_group + local_d  # (BLOCK_D,) channels
    n = tl.arange(0, BLOCK_N)
    mask_n = n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    row = (batch * dim + d) * length  # (BLOCK_D,) offset of token 0 of each channel in u, Δ, z, y
    bc_row = (pid * d_state + n) * length  # (BLOCK_N,) offset of token 0 of each state in B, C
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=mask_dn, other=0.0).to(ACC)  # (BLOCK_D, BLOCK_N)
    if HAS_D:
        D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC)
    bias = tl.zeros((BLOCK_D,), dtype=ACC)  # unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC)
    n_chunks = tl.cdiv(length, CHUNK)
    state_row = (batch * dim + d) * n_chunks * d_state  # (BLOCK_D,)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    for c in range(n_chunks):
        if STORE_STATES:
            offs = state_row[:, None] + c * d_state + n[None, :]
            tl.store(states_ptr + offs, h, mask=mask_dn)
        for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, length)):
            u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(ACC)  # (BLOCK_D,)
            _, dt = _load_delta(delta_ptr + row + t, mask_d, bias, HAS_BIAS, SOFTPLUS, ACC)
            B = tl.load(B_ptr + bc_row + t, mask=mask_n, other=0.0).to(ACC)  # (BLOCK_N,)
            C = tl.load(C_ptr + bc_row + t, mask=mask_n, other=0.0).to(ACC)
            h = _step(h, dt, u, A, B)
            y = tl.sum(h * C[None, :], axis=1)  # (BLOCK_D,)
            if HAS_D:
                y += D * u
            if HAS_Z:
                z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(ACC)
                y *= z * tl.sigmoid(z)
            tl.store(y_ptr + row + t, y, mask=mask_d)


@triton.jit
def _backward_kernel(
    u_ptr,  # (b, D, L)
    delta_ptr,  # (b, D, L)
    A_ptr,  # (D, N)
    B_ptr,  # (b, G, N, L)
    C_ptr,  # (b, G, N, L)
    D_ptr,  # (D,)
    z_ptr,  # (b, D, L)
    bias_ptr,  # (D,)
    dout_ptr,  # (b, D, L): gradient at the output
    states_ptr,  # (b, D, n_chunks, N), from the forward
    scratch_ptr,  # (programs, CHUNK + 1, BLOCK_D, BLOCK_N) workspace
    du_ptr,  # (b, D, L) out
    ddelta_ptr,  # (b, D, L) out
    dz_ptr,  # (b, D, L) out
    dA_ptr,  # (b, D, N) out (summed over b by the caller)
    dB_ptr,  # (b, G, N, L) zeroed: accumulated with atomic_add over channel blocks
    dC_ptr,  # (b, G, N, L) zeroed: idem
    dD_ptr,  # (b, D) out
    dbias_ptr,  # (b, D) out
    # states, scratch, dA, dB, dC, dD, dbias are in ACC's dtype
    length,
    dim,
    groups,
    d_state,
    CHUNK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    ACC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    batch, group = pid // groups, pid % groups
    dim_per_group = dim // groups
    local_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = local_d < dim_per_group
    d = group * dim_per_group + local_d
    n = tl.arange(0, BLOCK_N)
    mask_n = n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    row = (batch * dim + d) * length
    bc_row = (pid * d_state + n) * length
    A = tl.load(A_ptr + d[:, None] * d_state + n[None, :], mask=mask_dn, other=0.0).to(ACC)
    if HAS_D:
        D = tl.load(D_ptr + d, mask=mask_d, other=0.0).to(ACC)
    bias = tl.zeros((BLOCK_D,), dtype=ACC)  # unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(ACC)
    n_chunks = tl.cdiv(length, CHUNK)
    state_row = (batch * dim + d) * n_chunks * d_state
    program = pid * tl.num_programs(1) + tl.program_id(1)
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]  # (BLOCK_D, BLOCK_N) offsets in one scratch slot
    scratch = scratch_ptr + program * (CHUNK + 1) * BLOCK_D * BLOCK_N + tile  # slot k: h_{start + k - 1}

    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)  # a_{t+1} g_{t+1}: the adjoint arriving from token t + 1
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dD = tl.zeros((BLOCK_D,), dtype=ACC)
    dbias = tl.zeros((BLOCK_D,), dtype=ACC)
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        start = c * CHUNK
        end = tl.minimum(start + CHUNK, length)
        # 1. the chunk's states, forwards from its entry state, into the scratch
        h = tl.load(states_ptr + state_row[:, None] + c * d_state + n[None, :], mask=mask_dn, other=0.0).to(ACC)
        tl.store(scratch, h)
        for t in range(start, end):
            u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(ACC)
            _, dt = _load_delta(delta_ptr + row + t, mask_d, bias, HAS_BIAS, SOFTPLUS, ACC)
            B = tl.load(B_ptr + bc_row + t, mask=mask_n, other=0.0).to(ACC)
            h = _step(h, dt, u, A, B)
            tl.store(scratch + (t - start + 1) * BLOCK_D * BLOCK_N, h)
        tl.debug_barrier()  # the scratch written above is read below, possibly by other threads
        # 2. the chunk's tokens in reverse, with the adjoint g in registers
        for k in range(end - start):
            t = end - 1 - k
            u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(ACC)
            dt_in, dt = _load_delta(delta_ptr + row + t, mask_d, bias, HAS_BIAS, SOFTPLUS, ACC)
            B = tl.load(B_ptr + bc_row + t, mask=mask_n, other=0.0).to(ACC)
            C = tl.load(C_ptr + bc_row + t, mask=mask_n, other=0.0).to(ACC)
            dy = tl.load(dout_ptr + row + t, mask=mask_d, other=0.0).to(ACC)
            h = tl.load(scratch + (t - start + 1) * BLOCK_D * BLOCK_N).to(ACC)  # h_t
            h_prev = tl.load(scratch + (t - start) * BLOCK_D * BLOCK_N).to(ACC)  # h_{t-1}
            if HAS_Z:  # out = y ⊙ SiLU(z): dz = dout y SiLU'(z), dy = dout SiLU(z), y recomputed from h_t
                z = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(ACC)
                y = tl.sum(h * C[None, :], axis=1)
                if HAS_D:
                    y += D * u
                sig = tl.sigmoid(z)
                tl.store(dz_ptr + row + t, dy * y * sig * (1.0 + z * (1.0 - sig)), mask=mask_d)
                dy *= z * sig
            du = tl.zeros((BLOCK_D,), dtype=ACC)
            if HAS_D:
                dD += dy * u
                du += dy * D
            tl.atomic_add(dC_ptr + bc_row + t, tl.sum(dy[:, None] * h, axis=0), mask=mask_n)
            g = carry + dy[:, None] * C[None, :]  # g_t
            dtu = dt * u
            tl.atomic_add(dB_ptr + bc_row + t, tl.sum(g * dtu[:, None], axis=0), mask=mask_n)
            ddtu = tl.sum(g * B[None, :], axis=1)  # d(Δu)_t
            decay = tl.exp(dt[:, None] * A)  # a_t
            w = g * decay * h_prev  # w_t = g_t a_t h_{t-1}
            ddt = ddtu * u + tl.sum(w * A, axis=1)
            dA += w * dt[:, None]
            carry = decay * g
            if SOFTPLUS:
                ddt *= tl.sigmoid(dt_in)
            dbias += ddt
            tl.store(du_ptr + row + t, du + ddtu * dt, mask=mask_d)
            tl.store(ddelta_ptr + row + t, ddt, mask=mask_d)
        tl.debug_barrier()  # every read of this chunk's scratch is done before the next chunk overwrites it
    tl.store(dA_ptr + (batch * dim + d)[:, None] * d_state + n[None, :], dA, mask=mask_dn)
    tl.store(dD_ptr + batch * dim + d, dD, mask=mask_d)
    tl.store(dbias_ptr + batch * dim + d, dbias, mask=mask_d)


INTERPRETED = isinstance(_forward_kernel, InterpretedFunction)
"""Whether the kernels run in the Triton interpreter (``TRITON_INTERPRET=1`` when this module was imported), the only
way they take CPU tensors."""


def _acc_dtype(u: torch.Tensor) -> torch.dtype:
    """The kernels' compute and workspace dtype: float32, or float64 for float64 input."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _launch(u, A, B, block_d: int) -> tuple[tuple[int, int], dict]:
    """The grid (b G, channel blocks per group) and the block sizes and warps shared by both kernels."""
    batch, dim, _ = u.shape
    groups, d_state = B.shape[1], B.shape[2]
    block_d = min(block_d, triton.next_power_of_2(dim // groups))
    block_n = triton.next_power_of_2(d_state)
    grid = (batch * groups, triton.cdiv(dim // groups, block_d))
    warps = max(1, min(4, block_d * block_n // 128))  # 16 x 16 on 2 warps: no register spills in the backward
    acc = tl.float64 if _acc_dtype(u) == torch.float64 else tl.float32
    return grid, dict(BLOCK_D=block_d, BLOCK_N=block_n, ACC=acc, num_warps=warps)


def _chunk_length(length: int, chunk_size: int) -> int:
    """The tokens per chunk the kernels use: ``chunk_size``, but no more than the sequence rounded up to a power of
    two, so that the backward's scratch (Q + 1 states per program) is sized for a short sequence, not for a full
    chunk (ViM2's channel mixer scans 12-48 tokens per pixel), at a bounded number of kernel specialisations."""
    return min(chunk_size, triton.next_power_of_2(length))


def _on_device_of(u: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device, not the tensors': make u's device current (tensors on cuda:1
    with cuda:0 current would otherwise be an illegal memory access)."""
    return torch.cuda.device(u.device) if u.is_cuda else contextlib.nullcontext()


class _SelectiveScanTriton(torch.autograd.Function):
    """The two kernels as one differentiable op. The forward saves the inputs and the chunk-entry states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk_size, block_d, keep_states):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        D, z, delta_bias = (None if t is None else t.contiguous() for t in (D, z, delta_bias))
        batch, dim, length = u.shape
        grid, blocks = _launch(u, A, B, block_d)
        chunk_size = _chunk_length(length, chunk_size)
        shape = (batch, dim, triton.cdiv(length, chunk_size), A.shape[1]) if keep_states else (0,)
        states = u.new_empty(shape, dtype=_acc_dtype(u))  # (b, D, n_chunks, N)
        y = torch.empty_like(u)
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
        optional = [u if t is None else t for t in (D, z, delta_bias)]  # absent: a placeholder never read
        with _on_device_of(u):
            _forward_kernel[grid](
                *(u, delta, A, B, C, *optional, y, states),
                *(length, dim, B.shape[1], A.shape[1]),
                CHUNK=chunk_size,
                STORE_STATES=keep_states,
                **flags,
                **blocks,
            )
        if keep_states:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states)
            ctx.settings = flags, chunk_size, block_d
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # the kernels' gradients are not themselves differentiable
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, states = ctx.saved_tensors
        flags, chunk_size, block_d = ctx.settings
        batch, dim, length = u.shape
        grid, blocks = _launch(u, A, B, block_d)
        acc = _acc_dtype(u)
        slot = blocks["BLOCK_D"] * blocks["BLOCK_N"]
        scratch = u.new_empty(grid[0] * grid[1] * (chunk_size + 1) * slot, dtype=acc)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = None if z is None else torch.empty_like(z)
        dB, dC = (B.new_zeros(B.shape, dtype=acc) for _ in range(2))  # (b, G, N, L)
        dA = A.new_empty((batch, *A.shape), dtype=acc)  # (b, D, N)
        dD, dbias = (u.new_empty((batch, dim), dtype=acc) for _ in range(2))
        optional = [u if t is None else t for t in (D, z, delta_bias)]
        with _on_device_of(u):
            _backward_kernel[grid](
                *(u, delta, A, B, C, *optional, dout.contiguous(), states, scratch),
                *(du, ddelta, du if dz is None else dz, dA, dB, dC, dD, dbias),
                *(length, dim, B.shape[1], B.shape[2]),
                CHUNK=chunk_size,
                **flags,
                **blocks,
            )
        grads = [
            du,
            ddelta,
            dA.sum(0).to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D is None else dD.sum(0).to(D.dtype),
            dz,
            None if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
        ]
        return (*grads, None, None, None, None)


def selective_scan_triton(
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
    block_d: int = 16,
) -> torch.Tensor:
    """The S6 scan by the Triton kernels (module docstring), in u's dtype, computing in float32 (float64 for float64
    input). CUDA tensors, or CPU tensors where ``INTERPRETED``. ``chunk_size``: tokens between the states kept for
    the backward (Q); ``block_d``: channels per program (a power of two)."""
    B, C = grouped_bc(B, C, u.shape[1])
    if chunk_size < 1 or block_d < 1 or block_d & (block_d - 1):
        raise ValueError(
            f"selective scan: chunk_size must be positive and block_d a power of two, got {chunk_size}, {block_d}."
        )
    if u.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton selective scan needs CUDA tensors (or TRITON_INTERPRET=1), got {u.device.type}."
        )
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    keep_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _SelectiveScanTriton.apply(*inputs, delta_softplus, chunk_size, block_d, keep_states)
