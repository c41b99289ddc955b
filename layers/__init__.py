"""Layers shared by the token mixers (``mixerzoo.mixers``) and the builder (``mixerzoo.models``): activations and
norms, by name."""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from .activations import SquaredReLU, StarReLU, create_act
from .norms import NORMS, BatchNorm, GroupNorm1, LayerNorm, create_norm

__all__ = ["NORMS", "BatchNorm", "GroupNorm1", "LayerNorm", "SquaredReLU", "StarReLU", "create_act", "create_norm"]
