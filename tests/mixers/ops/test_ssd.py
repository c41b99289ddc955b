"""The SSD kernels of mixers/ops/ssd.py (used by Hydra and the quasiseparable matrix mixer): the chunked scan against
the token-by-token recurrence and against its materialised matrix, long-sequence stability, the dispatch; Hydra's
quasiseparable product in its two forms (dense L x L with a written-out backward, and two chunked SSD passes)
against each other and against the materialised quasiseparable matrix, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mixerzoo.mixers.ops.ssd as ssd_module
from mixerzoo.mixers.ops.ssd import (
    DENSE_MAX_TOKENS,
    default_chunk_size,
    quasiseparable,
    quasiseparable_matrix,
    ssd,
    ssd_chunked,
    ssd_matrix,
    ssd_sequential,
)


def _ssd_inputs(b: int, l: int, h: int, p: int, g: int, n: int, dtype=torch.float64, dt_scale: float = 1.0):
    x = torch.randn(b, l, h, p, dtype=dtype)
    dt = dt_scale * F.softplus(torch.randn(b, l, h, dtype=dtype))
    A = -torch.rand(h, dtype=dtype) - 0.5
    B = torch.randn(b, l, g, n, dtype=dtype)
    C = torch.randn(b, l, g, n, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C)]


# --- SSD kernels ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "chunk", "groups", "with_initial_state"),
    [(16, 4, 1, False), (19, 4, 1, True), (33, None, 2, False), (64, 16, 2, True), (70, 32, 1, True)],
    ids=lambda v: str(v),
)
def test_chunked_ssd_equals_sequential_recurrence_forward_and_backward(
    length: int, chunk: int | None, groups: int, with_initial_state: bool
) -> None:
    x, dt, A, B, C = inputs = _ssd_inputs(2, length, 4, 3, groups, 5)
    s0 = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True) if with_initial_state else None
    if with_initial_state:
        inputs.append(s0)
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, s0, return_final_state=True)
    y, final = ssd_chunked(x, dt, A, B, C, chunk, s0, return_final_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(final, final_ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(y)  # a generic upstream gradient
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + final_ref.sum(), inputs)
    grads = torch.autograd.grad((y * weights).sum() + final.sum(), inputs)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-9)


def test_ssd_matrix_is_the_recurrence() -> None:
    x, dt, A, B, C = _ssd_inputs(2, 11, 4, 3, 2, 5)
    y = torch.einsum("bhij,bjhp->bihp", ssd_matrix(dt, A, B, C), x)
    torch.testing.assert_close(y, ssd_sequential(x, dt, A, B, C))


def test_chunked_ssd_stays_finite_for_long_sequences_with_large_decays() -> None:
    x, dt, A, B, C = inputs = _ssd_inputs(1, 2048, 2, 4, 1, 8, dtype=torch.float32, dt_scale=20.0)
    with torch.no_grad():
        A.mul_(8.0)  # |dt A| up to ~1e3 per step: exp(-cumsum) would overflow without chunk-local, masked sums
    y = ssd(x, dt, A, B, C, chunk_size=64)
    grads = torch.autograd.grad(y.square().sum(), inputs)
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(g).all() for g in grads)


def test_default_chunk_divides_the_usual_token_counts() -> None:
    assert default_chunk_size(3136) == 64 and default_chunk_size(196) == 49 and default_chunk_size(784) == 56
    assert default_chunk_size(30) == 30 and default_chunk_size(1031) == 64  # short: one chunk; prime: padded


def test_ssd_dispatch_runs_in_float32_under_autocast_and_names_bad_backends() -> None:
    x, dt, A, B, C = (t.detach().float() for t in _ssd_inputs(1, 20, 2, 4, 1, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssd(x.bfloat16(), dt, A, B, C)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ssd_sequential(x.bfloat16().float(), dt, A, B, C), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="Unknown SSD backend 'triton'"):
        ssd(x, dt, A, B, C, backend="triton")
    if not (torch.cuda.is_available() and x.is_cuda):
        with pytest.raises(RuntimeError, match="backend='fused' needs CUDA tensors and mamba_ssm"):
            ssd(x, dt, A, B, C, backend="fused")


class _CudaLooking(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` says True: the dispatch's CUDA branch, traced without a GPU."""

    @property
    def is_cuda(self) -> bool:
        return True


def test_ssd_dispatch_traces_as_one_graph_for_cuda_tensors() -> None:
    """For CUDA tensors the dispatch asks whether mamba_ssm imports; under torch.compile the answer is a constant,
    not an import traced into the graph (a graph break; with ``fullgraph=True`` an error)."""
    x = torch.randn(3).as_subclass(_CudaLooking)
    fused = ssd_module._use_fused("auto", x)  # True only where mamba_ssm imports
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: t + ssd_module._use_fused("auto", t), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x).as_subclass(torch.Tensor), x.as_subclass(torch.Tensor) + fused)


# --- Hydra's quasiseparable product ------------------------------------------------------------------------------
def _qs_leaves(b: int, l: int, h: int, p: int, g: int, n: int, dtype=torch.float64) -> list[torch.Tensor]:
    """x, dt_f, dt_b, A, B_f, B_b, C_f, C_b, diag, initial state (2b, h, p, n): leaves that require grad."""
    x, dt, A, B, C = _ssd_inputs(b, l, h, p, g, n, dtype)
    extra = [F.softplus(torch.randn(b, l, h, dtype=dtype)), torch.randn(b, l, g, n, dtype=dtype)]
    extra += [torch.randn(b, l, g, n, dtype=dtype), torch.randn(b, l, h, dtype=dtype)]
    extra.append(torch.randn(2 * b, h, p, n, dtype=dtype))
    dt_b, B_b, C_b, diag, s0 = (t.requires_grad_() for t in extra)
    return [x, dt, dt_b, A, B, B_b, C, C_b, diag, s0]


def _qs(leaves: list[torch.Tensor], chunk_size: int | None, with_state: bool) -> torch.Tensor:
    x, dt_f, dt_b, A, B_f, B_b, C_f, C_b, diag, s0 = leaves
    state = s0 if with_state else None
    return quasiseparable(x, (dt_f, dt_b), A, (B_f, B_b), (C_f, C_b), diag, chunk_size, state, backend="torch")


@pytest.mark.parametrize(
    ("length", "groups", "with_state"),
    [(1, 1, False), (2, 1, True), (13, 2, False), (13, 2, True), (30, 1, True), (67, 1, False), (96, 2, True)],
    ids=lambda v: str(v),
)
def test_dense_quasiseparable_equals_chunked_scans_and_the_matrix_forward_and_backward(
    length: int, groups: int, with_state: bool
) -> None:
    leaves = _qs_leaves(2, length, 4, 3, groups, 5)  # 96 tokens: exponents split in 2 row blocks of 48; 67: one
    dense = _qs(leaves, None, with_state)  # at most DENSE_MAX_TOKENS tokens: the dense form
    chunked = _qs(leaves, 4, with_state)  # chunk_size < length: two chunked SSD passes
    x, dt_f, dt_b, A, B_f, B_b, C_f, C_b, diag, _ = leaves
    matrix = quasiseparable_matrix((dt_f, dt_b), A, (B_f, B_b), (C_f, C_b), diag)
    torch.testing.assert_close(dense, chunked, rtol=1e-10, atol=1e-10)
    if not with_state:
        torch.testing.assert_close(dense, torch.einsum("bhij,bjhp->bihp", matrix, x), rtol=1e-10, atol=1e-10)
    weights = torch.randn_like(dense)
    used = leaves if with_state else leaves[:-1]
    for g_dense, g_chunked in zip(
        torch.autograd.grad((dense * weights).sum(), used), torch.autograd.grad((chunked * weights).sum(), used)
    ):
        torch.testing.assert_close(g_dense, g_chunked, rtol=1e-9, atol=1e-9)


def test_dense_quasiseparable_passes_gradcheck() -> None:
    leaves = _qs_leaves(1, 7, 2, 2, 2, 2)

    def dense(*args: torch.Tensor) -> torch.Tensor:
        return _qs(list(args), None, True)

    assert torch.autograd.gradcheck(dense, leaves, fast_mode=True)


def test_dense_quasiseparable_runs_in_float32_and_returns_the_input_dtype() -> None:
    leaves = [t.detach().float() for t in _qs_leaves(1, 12, 2, 4, 1, 3)]
    x = leaves[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _qs([x.bfloat16(), *leaves[1:]], None, False)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), _qs([x.bfloat16().float(), *leaves[1:]], None, False), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(_qs(leaves, None, True), _qs(leaves, 5, True), rtol=1e-5, atol=1e-5)


def test_quasiseparable_takes_the_dense_form_up_to_256_tokens_or_the_chunk_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = ssd_module._quasiseparable_dense
    monkeypatch.setattr(ssd_module, "_quasiseparable_dense", lambda *a: calls.append(a[0].shape[1]) or original(*a))
    for length, chunk in [(DENSE_MAX_TOKENS, None), (DENSE_MAX_TOKENS + 1, None), (20, 20), (20, 19), (20, 64)]:
        leaves = [t.detach() for t in _qs_leaves(1, length, 2, 2, 1, 2, dtype=torch.float32)]
        _qs(leaves, chunk, False)
    assert calls == [DENSE_MAX_TOKENS, 20, 20]
