"""Token mixers: one module each, all ``(B, H, W, C) -> (B, H, W, C)``, built by name through the registry."""

from . import (  # noqa: F401  (registers the mixers)
    aff,
    attention,
    hydra_mixer,
    identity,
    mamba_mixer,
    matrix_mixer,
    pooling,
    random_mixing,
    sepconv,
    strip_mlp,
)
from .activations import SquaredReLU, StarReLU, create_act
from .registry import create_mixer, get_mixer_class, list_mixers, mixer_spec_name, register_mixer

__all__ = [
    "SquaredReLU",
    "StarReLU",
    "create_act",
    "create_mixer",
    "get_mixer_class",
    "list_mixers",
    "mixer_spec_name",
    "register_mixer",
]
