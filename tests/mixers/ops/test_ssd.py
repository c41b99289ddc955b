"""The SSD kernels of mixers/ops/ssd.py (used by Hydra and the quasiseparable matrix mixer): the chunked scan against
the token-by-token recurrence and against its materialised matrix, long-sequence stability, and the dispatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.mixers.ops.ssd import default_chunk_size, ssd, ssd_chunked, ssd_matrix, ssd_sequential


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
