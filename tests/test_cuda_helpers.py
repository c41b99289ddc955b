"""The helpers of ``tests/test_cuda.py``, on a CPU: a comparison of a CPU reference with a device copy gives every
gradient, and the float32 comparisons run without TF32; and its tests' code, with the CPU as the device.

A dtype copy (float64) stands in for the device copy: like ``t.to("cuda")``, ``t.to(torch.float64)`` makes a new
tensor, while ``t.to("cpu")`` of a CPU tensor returns ``t``."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.mixers import list_mixers
from tests import test_cuda
from tests.test_cuda import FLOAT32_BOUND, ieee_float32, leaves, outputs_and_grads, relative_error


def test_the_reference_and_the_device_copy_are_separate_leaves_with_gradients() -> None:
    """The CPU reference first, then the copy: every gradient of both exists and agrees, and the inputs are left as
    they were (the old ``t.to(device).requires_grad_(True)`` marked the input itself on the CPU side, so the copy
    made from it was a non-leaf and its ``.grad`` stayed None)."""
    inputs = [torch.randn(3, 5), torch.randn(5), torch.randn(3, 1)]

    def fn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.tanh(a * b + c)

    expected = outputs_and_grads(fn, inputs, "cpu")
    actual = outputs_and_grads(fn, inputs, "cpu", torch.float64)
    assert not any(t.requires_grad for t in inputs)
    assert all(g is not None for g in expected[1:] + actual[1:])
    assert actual[0].dtype == torch.float64
    for a, e in zip(actual, expected):
        assert relative_error(a, e) < 1e-6


def test_leaves_are_copies() -> None:
    x = torch.randn(4)
    (copy,) = leaves([x], "cpu")
    assert copy.is_leaf and copy.requires_grad and copy.data_ptr() != x.data_ptr()


def _round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits (round to nearest), as the tensor cores read it."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_tf32_rounding_alone_exceeds_the_float32_bound() -> None:
    """Why the float32 comparisons run with TF32 off: a 3x3 convolution (64 channels) with its inputs rounded to
    TF32, which cuDNN does by default, is off by more than ``FLOAT32_BOUND`` while float32 is well inside it."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 64, 16, 16, generator=gen), torch.randn(64, 64, 3, 3, generator=gen)
    exact = F.conv2d(x.double(), w.double())
    assert relative_error(F.conv2d(x, w), exact) < FLOAT32_BOUND / 10
    assert relative_error(F.conv2d(_round_to_tf32(x).double(), _round_to_tf32(w).double()), exact) > FLOAT32_BOUND


def test_ieee_float32_turns_tf32_off_and_restores_the_flags() -> None:
    """On, as torch's cuDNN default and train.py on a GPU set them; off inside; restored after, also after an
    error."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = True
        with pytest.raises(KeyError), ieee_float32():
            assert not (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
            assert not torch.backends.cudnn.benchmark
            raise KeyError
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


# test_cuda.py's own code, with the CPU standing in for the GPU (the bounds hold there too): a CUDA test that breaks
# for a reason of its own (an API it calls has changed) fails here, not on the first GPU that runs it
STAND_IN = [
    *[(test_cuda.test_mixer_under_autocast_on_cuda_matches_float32_on_cpu, {"name": n}) for n in list_mixers()],
    (test_cuda.test_selective_scan_on_cuda_matches_the_reference, {"backend": "torch"}),
    (test_cuda.test_ssd_on_cuda_matches_the_sequential_reference, {"backend": "torch"}),
    (test_cuda.test_channels_last_equals_contiguous_on_cuda, {"mixer": "attention"}),
    (test_cuda.test_fp16_with_a_grad_scaler_trains, {}),
]


@pytest.mark.parametrize(
    ("test", "kwargs"), STAND_IN, ids=[f"{t.__name__}{list(k.values()) or ''}" for t, k in STAND_IN]
)
def test_the_cuda_tests_run_with_the_cpu_standing_in(test: Any, kwargs: dict[str, Any], monkeypatch) -> None:
    monkeypatch.setattr(test_cuda, "CUDA", torch.device("cpu"))
    if "dtype" in inspect.signature(test).parameters:
        kwargs = {**kwargs, "dtype": torch.bfloat16}
    with ieee_float32():
        test(**kwargs)
