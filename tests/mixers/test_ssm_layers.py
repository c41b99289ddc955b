"""Shared SSM layer pieces: the depthwise conv + SiLU with its written-out backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixerzoo.mixers.ssm_layers import _DepthwiseConv1dSiLU, conv1d_silu, same_conv1d


@pytest.mark.parametrize(("kernel_size", "bias", "length"), [(3, True, 19), (7, False, 64), (1, True, 5)])
def test_conv1d_silu_matches_the_conv_module_forward_and_backward(kernel_size: int, bias: bool, length: int) -> None:
    """The CPU autograd function equals nn.Conv1d + SiLU (the path other devices take) in float64, with gradients
    for the input, the weight and the bias; it runs tokens-last, so its output is contiguous (b, L, C) memory."""
    torch.manual_seed(0)
    conv = same_conv1d("test", 6, kernel_size, bias=bias).double()
    x = torch.randn(3, length, 6, dtype=torch.float64, requires_grad=True)
    out = conv1d_silu(x, conv)
    expected = F.silu(conv(x.transpose(1, 2))).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert out.is_contiguous()
    grad = torch.randn_like(out)
    params = [x, *conv.parameters()]
    got = torch.autograd.grad(out, params, grad)
    want = torch.autograd.grad(expected, params, grad)
    for name, a, b in zip(["input", "weight", "bias"], got, want, strict=False):
        torch.testing.assert_close(a, b, msg=f"gradient of the {name} differs")


def test_conv1d_silu_gradcheck() -> None:
    weight = torch.randn(4, 1, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: _DepthwiseConv1dSiLU.apply(*a, 1), (x, weight, bias))
