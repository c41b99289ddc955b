"""Mamba-2 state-space duality (SSD) scan: a sequential reference, a chunked pure-PyTorch form and the fused
``mamba_ssm`` Triton kernel (Dao & Gu, "Transformers are SSMs", ICML 2024, arXiv 2405.21060; code followed for
the semantics: state-spaces/mamba ``mamba_ssm/modules/ssd_minimal.py`` and ``ops/triton/ssd_combined.py``).

Per head h (scalar decay ``A_h < 0``), group g = the head's group, with ``a_t = dt_t A_h`` the log-decay:

    s_t = exp(a_t) s_{t-1} + dt_t x_t B_tᵀ        s_t: (P, N) state,  s_{-1} = initial state (or 0)
    y_t = s_t C_t                                  y_t: (P,)

i.e. ``y = M x`` with the lower-triangular (semiseparable) matrix, diagonal included,

    M_ij = (C_i · B_j) exp(a_{j+1} + ... + a_i) dt_j      (i >= j),   0 above the diagonal.

Shapes (mamba_ssm's): x (b, l, h, p), dt (b, l, h) (already positive, e.g. softplus'd), A (h,),
B, C (b, l, g, n) with h % g == 0, initial_state (b, h, p, n). Output y (b, l, h, p) [, final state (b, h, p, n)].

- ``ssd_sequential``: the recurrence, one step per token (test oracle; slow).
- ``ssd_chunked``: the SSD block decomposition in chunks of Q tokens (Listing 1 of the paper): (1) intra-chunk
  outputs by a masked Q x Q matmul, (2) each chunk's final state, (3) the recurrence over chunk states,
  (4) state-to-output. O(b h L (Q (N + P) + N P)) work, all matmuls. Stability: decays are float32 (float64 for
  float64 input), cumulative sums are chunk-local, and invalid (upper-triangle) entries are set to -inf *before*
  ``exp`` (masking after ``exp`` gives inf * 0 = NaN gradients). Any length: the sequence is right-padded with
  dt = 0, x = 0 (no decay, no input), which leaves the outputs and the final state exact. The default chunk size
  is a divisor of L near 64 (the fastest on CPU), so no padding happens for the usual grids (196, 784, 3136).
- ``ssd``: dispatch. ``backend="auto"`` runs the fused kernel when ``mamba_ssm`` imports and the tensors are on
  CUDA, else the chunked one; ``"torch"``/``"fused"`` force one. The fused call is kept out of ``torch.compile``
  graphs (``torch.compiler.disable``; mamba_ssm's autograd.Function does not trace, state-spaces/mamba #369), and
  whether it imports is a constant for ``torch.compile`` (``ops.kernel_importable``), not an import traced.
  ``ssd`` computes in float32 (float64 stays float64) with autocast off, and returns x's dtype.
- ``quasiseparable`` / ``quasiseparable_matrix``: Hydra's bidirectional matrix (Prop. 3.7 of arXiv 2407.09941) as
  two ``ssd`` passes (forward, and backward on the flipped sequence, batched), each shifted by one token, plus a
  diagonal, or, up to ``DENSE_MAX_TOKENS`` tokens, as one dense L x L product per head built in place (faster
  on CPU at these lengths: no flips, no chunk states, half the MACs at L = 196); and the same matrix
  materialised (the test reference). Used by ``hydra`` and ``matrix_mixer(structure="quasiseparable")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import autocast_off, compute_dtype, kernel_importable, optional_kernel, use_fused

__all__ = [
    "default_chunk_size",
    "fused_ssd_available",
    "quasiseparable",
    "quasiseparable_matrix",
    "ssd",
    "ssd_chunked",
    "ssd_matrix",
    "ssd_sequential",
]


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD recurrence one token at a time (reference; computes in x's dtype)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    Bh = B.repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.to(x.dtype)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)  # (b, h)
        state = decay[:, :, None, None] * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)  # (b, l, h, p)
    return (y, state) if return_final_state else y


def ssd_matrix(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The materialised SSD matrix (b, h, L, L): ``M_ij = (C_i·B_j) exp(sum_{k=j+1}^{i} a_k) dt_j`` for i >= j."""
    l, h, g = dt.shape[1], dt.shape[2], B.shape[2]
    a = dt * A  # (b, l, h)
    cs = torch.cumsum(a, dim=1).transpose(1, 2)  # (b, h, l)
    causal = torch.ones(l, l, dtype=torch.bool, device=dt.device).tril()
    decay = torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, float("-inf")))  # (b, h, i, j)
    cb = torch.einsum("bign,bjgn->bgij", C, B).repeat_interleave(h // g, dim=1)  # (b, h, i, j)
    return cb * decay * dt.transpose(1, 2)[:, :, None, :]


def default_chunk_size(length: int, target: int = 64) -> int:
    """A chunk size for ``length`` tokens: the whole sequence up to ``target``, else the divisor of the length in
    [target/2, 2 target] closest to ``target`` (no padding), else ``target``."""
    if length <= target:
        return max(length, 1)
    divisors = [q for q in range(target // 2, 2 * target + 1) if length % q == 0]
    return min(divisors, key=lambda q: (abs(q - target), q)) if divisors else target


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """exp of the segment sums of ``a`` (..., T): out[..., i, j] = exp(a_{j+1} + ... + a_i) for i >= j, else 0.
    Stable form: masked entries are -inf before ``exp``, sums taken along rows (no cumsum differences)."""
    T = a.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    seg = a[..., :, None].expand(*a.shape, T).masked_fill(~strict, 0.0)  # seg[..., i, j] = a_i for i > j
    seg = torch.cumsum(seg, dim=-2)  # sum_{k=j+1}^{i} a_k
    return torch.exp(seg.masked_fill(~torch.ones_like(strict).tril(), float("-inf")))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD (see the module docstring); computes in x's dtype, which should be float32 or float64."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g
    Q = chunk_size or default_chunk_size(l)
    pad = (-l) % Q
    X = x * dt[..., None]  # (b, l, h, p): input scaled by the step
    a = dt * A  # (b, l, h) log-decays
    if pad:  # dt = 0 past the end: no decay, no input (exact for a causal scan)
        X, a = F.pad(X, (0, 0, 0, 0, 0, pad)), F.pad(a, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (l + pad) // Q
    X = X.reshape(b, c, Q, g, hg, p)
    Bc, Cc = B.reshape(b, c, Q, g, n), C.reshape(b, c, Q, g, n)
    a = a.reshape(b, c, Q, g, hg).permute(0, 3, 4, 1, 2)  # (b, g, hg, c, Q)
    cs = torch.cumsum(a, dim=-1)  # chunk-local cumulative log-decay

    # 1. intra-chunk (diagonal blocks): Y_i = sum_{j<=i in chunk} (C_i·B_j) exp(cs_i - cs_j) X_j
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((cs[..., :, None] - cs[..., None, :]).masked_fill(~causal, float("-inf")))  # (b,g,hg,c,i,j)
    scores = torch.einsum("bcign,bcjgn->bgcij", Cc, Bc)  # (b, g, c, Q, Q)
    y = torch.einsum("bgzcij,bcjgzp->bcigzp", scores[:, :, None] * decay, X)

    # 2. state at the end of each chunk from its own inputs: sum_j exp(cs_end - cs_j) X_j B_jᵀ
    to_end = torch.exp(cs[..., -1:] - cs)  # (b, g, hg, c, Q)
    states = torch.einsum("bcjgn,bgzcj,bcjgzp->bcgzpn", Bc, to_end, X)  # (b, c, g, hg, p, n)

    # 3. recurrence over chunks: the state entering chunk k (k = 0..c), with the initial state prepended
    if initial_state is None:
        init = states.new_zeros(b, 1, g, hg, p, n)
    else:
        init = initial_state.to(states.dtype).reshape(b, 1, g, hg, p, n)
    states = torch.cat([init, states], dim=1)  # (b, c+1, g, hg, p, n)
    chunk_decay = _segsum_exp(F.pad(cs[..., -1], (1, 0)))  # (b, g, hg, c+1, c+1)
    states = torch.einsum("bgzkc,bcgzpn->bkgzpn", chunk_decay, states)
    final_state = states[:, -1].reshape(b, h, p, n)

    # 4. state-to-output: C_i · (state entering the chunk) decayed to position i
    decay_in = torch.exp(cs).permute(0, 3, 4, 1, 2)[..., None]  # (b, c, Q, g, hg, 1)
    y = y + torch.einsum("bcign,bcgzpn->bcigzp", Cc, states[:, :-1]) * decay_in
    y = y.reshape(b, c * Q, h, p)[:, :l]
    return (y, final_state) if return_final_state else y


_FUSED_KERNEL = ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined")  # module, name


def fused_ssd_available() -> bool:
    return torch.cuda.is_available() and kernel_importable(*_FUSED_KERNEL)


def _use_fused(backend: str, x: torch.Tensor) -> bool:
    """The backend dispatch (``ops.use_fused``). Whether mamba_ssm imports is a constant for ``torch.compile``
    (``ops.kernel_importable``), so graphs trace through the dispatch without a break on any device."""
    fusable = x.is_cuda and kernel_importable(*_FUSED_KERNEL)
    needs = ""
    if backend == "fused" and not fusable:
        mamba_ssm = "importable" if kernel_importable(*_FUSED_KERNEL) else "not importable"
        needs = "CUDA tensors and mamba_ssm (mamba_chunk_scan_combined); "
        needs += f"got {x.device.type} tensors, mamba_ssm {mamba_ssm}"
    return use_fused(backend, "SSD", fusable, needs)


@torch.compiler.disable
def _ssd_fused(x, dt, A, B, C, chunk_size, initial_state, return_final_state):
    out = optional_kernel(*_FUSED_KERNEL)(
        x,
        dt,
        A,
        B,
        C,
        chunk_size=chunk_size or 256,
        initial_states=initial_state,
        return_final_states=return_final_state,
    )
    return out


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan in float32 (float64 kept) with autocast off; returns x's dtype. See the module docstring."""
    fused = _use_fused(backend, x)
    dtype = x.dtype
    compute = compute_dtype(dtype)
    with autocast_off(x.device.type):
        args = [t.to(compute) for t in (x, dt, A, B, C)]
        state = None if initial_state is None else initial_state.to(compute)
        if fused:
            out = _ssd_fused(*args, chunk_size, state, return_final_state)
        else:
            out = ssd_chunked(*args, chunk_size=chunk_size, initial_state=state, return_final_state=return_final_state)
    if return_final_state:
        return out[0].to(dtype), out[1]
    return out.to(dtype)


def _directions(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Both directions of a bidirectional scan stacked along the batch, the backward one in scan (flipped) order."""
    return torch.cat([forward, backward.flip(1)])


DENSE_MAX_TOKENS = 256  # quasiseparable: up to this many tokens, one dense L x L product (the fused kernel's chunk)


class _TriangularDecayMix(torch.autograd.Function):
    """``y = W x`` per (batch, head), with the rows cut into nb blocks of Q = L / nb rows (I = i // Q):

        W_ij = exp(p_i + q_Ij) K_ij  (i > j),   exp(r_i + s_Ij) K_ij  (i < j),   d_i  (i = j).

    x (b, h, L, P); p, r, d (b, h, L); q, s (b, h, nb, L), all contiguous; K (b, g, L, L), shared by the h / g
    heads of a group. Splitting each exponent at its row block keeps the row terms as small as one block's decay
    (see ``_quasiseparable_dense``). Forward and backward are written out so that W is built in place in one
    (b, h, L, L) buffer (two when training) instead of one per elementwise op; under ``torch.export`` the forward
    adds the diagonal out of place (W x + d ⊙ x), as ``torch.onnx`` rejects writes into diagonal views. Backward:
    dx = Wᵀ dy, dW = dy xᵀ, dK = Σ_heads dW ⊙ exp(.), and the gradient of an exponent, dW ⊙ W, summed over its
    triangle's rows (p, r) or over each row block's columns (q, s), taken blockwise (``_triangle_sums``) so that
    the backward pass needs one (b, h, L, L) buffer. Saved: x, d, K and exp(.) (one (b, h, L, L) tensor)."""

    @staticmethod
    def forward(ctx, x, p, q, r, s, d, K):
        b, h, L, _ = x.shape
        nb = q.shape[2]
        lower, upper = _triangles(L, x)
        E = (p.view(b, h, nb, L // nb, 1) + q[..., None, :]).reshape(b, h, L, L)  # the exponent, built in place
        E.mul_(lower).addcmul_(upper, r[..., :, None])  # lower: p_i + q_Ij; upper: r_i ...
        E.view(b, h, nb, L // nb, L).addcmul_(upper.view(nb, L // nb, L), s[..., None, :])  # ... + s_Ij
        if torch.compiler.is_exporting():  # the same product without writes into diagonal views (torch.onnx)
            diagonal = torch.eye(L, dtype=torch.bool, device=x.device)
            W = E.masked_fill(diagonal, float("-inf")).exp() * _per_head(K, h)
            return torch.matmul(W, x) + d[..., None] * x
        E.diagonal(dim1=-2, dim2=-1).fill_(float("-inf"))
        E.exp_()
        training = any(ctx.needs_input_grad)
        W = (E * _per_head(K, h)).contiguous() if training else E.mul_(_per_head(K, h))
        W.diagonal(dim1=-2, dim2=-1).copy_(d)
        if training:
            ctx.save_for_backward(x, d, K, E)
            ctx.blocks = nb
        return torch.matmul(W, x)

    @staticmethod
    def backward(ctx, dy):
        x, d, K, E = ctx.saved_tensors
        b, h, L, P = x.shape
        g, nb = K.shape[1], ctx.blocks
        dy = dy.contiguous()
        W = torch.mul(E, _per_head(K, h), out=torch.empty_like(E))
        W.diagonal(dim1=-2, dim2=-1).copy_(d)
        dx = torch.matmul(W.transpose(-1, -2), dy)
        dW = torch.bmm(dy.view(b * h, L, P), x.view(b * h, L, P).transpose(1, 2), out=W.view(b * h, L, L))
        H = dW.view(b, h, L, L).mul_(E)  # dW ⊙ exp(.), zero on the diagonal
        dK = H.view(b, g, h // g, L, L).sum(2)
        G = H.mul_(_per_head(K, h))  # dW ⊙ W, zero on the diagonal
        return dx, *_triangle_sums(G, nb), (dy * x).sum(-1), dK


def _triangle_sums(G: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For G (b, h, L, L) with a zero diagonal and its rows and columns cut into nb blocks of Q: the row sums of its
    strictly lower and strictly upper triangles (b, h, L), and their column sums over each row block (b, h, nb, L),
    as (lower rows, lower columns, upper rows, upper columns): sums over whole blocks, plus the masked nb diagonal
    Q x Q blocks, the only ones that straddle the diagonal (nothing of G's size is allocated)."""
    b, h, L, _ = G.shape
    Q = L // nb
    by_col_block = G.view(b, h, nb, Q, nb, Q).sum(-1)  # [I, i, J]: row sums over column block J
    by_row_block = G.view(b, h, nb, Q, L).sum(3).view(b, h, nb, nb, Q)  # [I, J, j]: column sums over row block I
    on_diag = G.view(b, h, nb, Q, nb, Q).diagonal(dim1=2, dim2=4).permute(0, 1, 4, 2, 3)  # (b, h, nb, Q, Q)
    before, after = _triangles(nb, G)  # J < I, J > I
    lower_Q, upper_Q = _triangles(Q, G)
    sums = []
    for outside, inside in ((before, lower_Q), (after, upper_Q)):
        part = on_diag * inside  # [I, i, j], the diagonal blocks' part of this triangle
        rows = (by_col_block * outside[:, None, :]).sum(-1) + part.sum(-1)  # (b, h, nb, Q)
        cols = by_row_block * outside[..., None]
        cols.diagonal(dim1=2, dim2=3).add_(part.sum(-2).transpose(-1, -2))  # the diagonal block's own columns
        sums += [rows.reshape(b, h, L), cols.reshape(b, h, nb, L)]
    return sums[0], sums[1], sums[2], sums[3]


def _triangles(L: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, L) masks in like's dtype: 1 strictly below, and strictly above, the diagonal."""
    ones = torch.ones(L, L, dtype=like.dtype, device=like.device)
    return ones.tril(-1), ones.triu(1)


def _per_head(K: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, g, L, L) -> (b, heads, L, L), each group's matrix for its heads (a view when g = 1)."""
    b, g, L, _ = K.shape
    return K[:, :, None].expand(b, g, heads // g, L, L).reshape(b, heads, L, L)


def _quasiseparable_dense(
    x: torch.Tensor,
    dt: tuple[torch.Tensor, torch.Tensor],
    A: torch.Tensor,
    B: tuple[torch.Tensor, torch.Tensor],
    C: tuple[torch.Tensor, torch.Tensor],
    diag: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> torch.Tensor:
    """``quasiseparable`` as one dense L x L product per head (no flips, no chunk states), for short sequences.

    With cs the cumulative sums of a = dt A in token order, the entries of ``quasiseparable_matrix`` are
    i > j: exp(cs^f_{i-1} - cs^f_j + log dt^f_j) (C^f_{i-1}·B^f_j); i < j: exp(cs^b_{j-1} - cs^b_i + log dt^b_j)
    (C^b_{i+1}·B^b_j); i = j: δ_i. Precision: the cumulative sums are taken in float64 and each exponent is split
    at the start of its row's block of Q = ``default_chunk_size(L)`` rows (one block if Q does not divide L), into
    a row term (the decay inside the block) and a column term, both rounded to the compute dtype; so an exponent
    is as exact as in the chunked scan, whose cumulative sums are chunk-local, not a difference of two sums over
    the whole sequence. dt is floored at the smallest normal float so that log dt is finite."""
    batch, L, h, _ = x.shape
    (dt_f, dt_b), (B_f, B_b), (C_f, C_b) = dt, B, C
    dtype, wide = x.dtype, torch.float64
    Q = default_chunk_size(L)
    Q = Q if L % Q == 0 else L
    a_f, a_b = ((t.to(wide) * A.to(wide)).transpose(1, 2) for t in (dt_f, dt_b))  # (b, h, L)
    log_f, log_b = (torch.log(t.clamp_min(torch.finfo(dtype).tiny)).to(wide).transpose(1, 2) for t in (dt_f, dt_b))
    cs_f, cs_b = torch.cumsum(a_f, -1), torch.cumsum(a_b, -1)
    into_row_f = cs_f - a_f  # cs^f_{i-1}, the forward decay from the start up to row i
    ref_f, ref_b = into_row_f[..., ::Q], cs_b[..., ::Q]  # (b, h, nb): each row block's reference
    p = into_row_f.unflatten(-1, (-1, Q)) - ref_f[..., None]  # (b, h, nb, Q)
    q = ref_f[..., None] - (cs_f - log_f)[..., None, :]  # (b, h, nb, L)
    r = ref_b[..., None] - cs_b.unflatten(-1, (-1, Q))
    s = (cs_b - a_b + log_b)[..., None, :] - ref_b[..., None]
    p, r = p.flatten(-2), r.flatten(-2)
    C_f = F.pad(C_f[:, :-1], (0, 0, 0, 0, 1, 0))  # row i reads C^f_{i-1} (row 0: nothing below the diagonal)
    C_b = F.pad(C_b[:, 1:], (0, 0, 0, 0, 0, 1))  # row i reads C^b_{i+1}
    lower = torch.ones(L, L, dtype=torch.bool, device=x.device).tril(-1)
    K = torch.where(lower, torch.einsum("bign,bjgn->bgij", C_f, B_f), torch.einsum("bign,bjgn->bgij", C_b, B_b))
    terms = (t.to(dtype).contiguous() for t in (p, q, r, s))
    y = _TriangularDecayMix.apply(x.transpose(1, 2).contiguous(), *terms, diag.transpose(1, 2).contiguous(), K)
    y = y.transpose(1, 2)  # (b, L, h, P)
    if initial_state is not None:  # the states entering each scan, decayed to row i: C^f_{i-1} exp(cs^f_{i-1}) s0^f
        g = B_f.shape[2]  # and C^b_{i+1} exp(cs^b_{L-1} - cs^b_i) s0^b
        s0 = initial_state.unflatten(1, (g, h // g))  # (2b, g, h/g, P, N)
        decay_f = into_row_f.exp().to(dtype).transpose(1, 2)[..., None]  # (b, L, h, 1)
        decay_b = (cs_b[..., -1:] - cs_b).exp().to(dtype).transpose(1, 2)[..., None]
        into_f = torch.einsum("blgn,bgzpn->blgzp", C_f, s0[:batch]).flatten(2, 3) * decay_f
        into_b = torch.einsum("blgn,bgzpn->blgzp", C_b, s0[batch:]).flatten(2, 3) * decay_b
        y = y + into_f + into_b
    return y


def quasiseparable(
    x: torch.Tensor,
    dt: tuple[torch.Tensor, torch.Tensor],
    A: torch.Tensor,
    B: tuple[torch.Tensor, torch.Tensor],
    C: tuple[torch.Tensor, torch.Tensor],
    diag: torch.Tensor,
    chunk_size: int | None = None,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Hydra's quasiseparable matrix times x (Prop. 3.7: QS(X) = shift(SS(X)) + flip(shift(SS(flip X))) + D X),
    with the entries given in ``quasiseparable_matrix``.

    x (b, l, h, p); dt = (forward, backward) each (b, l, h), positive; B, C = (forward, backward) each (b, l, g, n);
    all in token order. A (h,); diag (b, l, h), the diagonal δ; initial_state (2b, h, p, n) or None, the forward
    then the backward pass's. Returns (b, l, h, p), in x's dtype, computed in float32 (float64 kept).

    Two forms. Sequences of at most ``DENSE_MAX_TOKENS`` tokens (or of at most ``chunk_size``, when given) take one
    dense L x L product per head (``_quasiseparable_dense``: the two triangles and the diagonal in one matrix, no
    flips); longer ones, and the fused kernel, two SSD passes (forward, and backward on the flipped sequence) run as
    one SSD over 2b sequences, each shifted by one token, plus the diagonal term.
    """
    fused = _use_fused(backend, x)
    length = x.shape[1]
    if not fused and (length <= chunk_size if chunk_size else length <= DENSE_MAX_TOKENS):
        dtype = x.dtype
        compute = compute_dtype(dtype)
        with autocast_off(x.device.type):
            dt, B, C = ((u.to(compute), v.to(compute)) for u, v in (dt, B, C))
            state = None if initial_state is None else initial_state.to(compute)
            y = _quasiseparable_dense(x.to(compute), dt, A.to(compute), B, C, diag.to(compute), state)
        return y.to(dtype)
    batch = x.shape[0]
    dt2, B2, C2 = _directions(*dt), _directions(*B), _directions(*C)
    backend = "fused" if fused else "torch"
    y = ssd(_directions(x, x), dt2, A, B2, C2, chunk_size, initial_state, backend=backend)  # (2b, l, h, p)
    y = F.pad(y[:, :-1], (0, 0, 0, 0, 1, 0))  # shift by one token, zero first row: roll(y, 1); y[:, 0] = 0
    return y[:batch] + y[batch:].flip(1) + x * diag[..., None]


def quasiseparable_matrix(
    dt: tuple[torch.Tensor, torch.Tensor],
    A: torch.Tensor,
    B: tuple[torch.Tensor, torch.Tensor],
    C: tuple[torch.Tensor, torch.Tensor],
    diag: torch.Tensor,
) -> torch.Tensor:
    """The matrix ``quasiseparable`` applies, materialised (b, h, L, L) (inputs as there), with a_t = dt_t A_h:

    i > j: (C^f_{i-1} · B^f_j) exp(a^f_{j+1} + ... + a^f_{i-1}) dt^f_j;  i < j: the same from the backward stream,
    (C^b_{i+1} · B^b_j) exp(a^b_{i+1} + ... + a^b_{j-1}) dt^b_j;  i = j: diag_i."""
    batch = diag.shape[0]
    M = ssd_matrix(_directions(*dt), A, _directions(*B), _directions(*C))  # (2b, h, L, L), both in scan order
    M = F.pad(M[..., :-1, :], (0, 0, 1, 0))  # shift by one: row i <- row i-1
    return M[:batch] + M[batch:].flip(-1, -2) + torch.diag_embed(diag.transpose(1, 2))
