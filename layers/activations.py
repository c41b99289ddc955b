"""Activations of the MetaFormer baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024).

StarReLU(x) = s * relu(x)^2 + b with one learnable scalar pair (s, b) per activation instance, initialised
to (1, 0) as in the released code; SquaredReLU(x) = relu(x)^2.
"""

from __future__ import annotations

import inspect

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function

__all__ = ["ACTIVATIONS", "SquaredReLU", "StarReLU", "create_act", "star_relu"]


@register_notrace_function
def star_relu(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``scale * relu(x)^2 + bias``. With an autograd graph to record: addcmul (3 passes over x instead of 4);
    without (inference): one buffer updated in place (~2x faster on CPU, where it is memory-bound). An FX leaf:
    the choice is made when a graph runs, not once when it is traced."""
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or bias.requires_grad):
        return torch.addcmul(bias, scale, F.relu(x).square())
    return F.relu(x).square_().mul_(scale).add_(bias)


torch.fx.wrap("star_relu")


class StarReLU(nn.Module):
    """s * relu(x)^2 + b, with scalar learnable s and b (shape (1,))."""

    def __init__(
        self,
        scale_value: float = 1.0,
        bias_value: float = 0.0,
        learnable: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.scale = nn.Parameter(torch.full((1,), scale_value, **dd), requires_grad=learnable)
        self.bias = nn.Parameter(torch.full((1,), bias_value, **dd), requires_grad=learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return star_relu(x, self.scale, self.bias)


class SquaredReLU(nn.Module):
    """relu(x)^2 (So et al., "Primer", arXiv 2109.08668)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "starrelu": StarReLU,
    "squaredrelu": SquaredReLU,
    "identity": nn.Identity,
}


def create_act(
    name: str,
    inplace: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """A fresh activation module by name (each instance owns its parameters, e.g. StarReLU's s and b). ``device``
    and ``dtype`` go to the activations that create parameters (those whose constructor takes them); ``inplace``
    to those that can overwrite their input (``nn.ReLU``, ``nn.SiLU``): for callers that apply the activation to
    a fresh tensor nothing else reads (a norm's output), which saves one buffer and its first-touch cost."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}.")
    cls = ACTIVATIONS[name]
    parameters = inspect.signature(cls).parameters
    options = dict(device=device, dtype=dtype) if "device" in parameters else {}
    if inplace and "inplace" in parameters:
        options["inplace"] = True
    return cls(**options)
