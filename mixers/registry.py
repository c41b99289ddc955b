"""The token-mixer and channel-mixer registries (``mixerzoo.registry.Registry``, the zoo's one mechanism).

A spec is a name (``"pooling"``) or a mapping holding the name plus options (``{"name": "attention",
"head_dim": 32}``, what a Hydra config gives); options may also be given as keywords
(``create_mixer("attention", 64, head_dim=32)``). Every option is applied or the call raises an error naming the
accepted ones. The builder's *context* (``grid``, ``img_size``) travels separately (``context=``) and reaches only
mixers whose signature names it.

Token mixers (``MIXERS``) map a channels-last grid ``(B, H, W, C)`` to the same shape and mix across tokens;
channel mixers (``CHANNEL_MIXERS``, the MLP slot of a block) have the same interface but mix each token's channels
only. The backbone builder keeps its other slots (stem, downsampling, block, extras, head) and the named layouts
in registries of the same class (``mixerzoo.models.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mixerzoo.registry import Registry, Spec

__all__ = [
    "CHANNEL_MIXERS",
    "MIXERS",
    "create_channel_mixer",
    "create_mixer",
    "list_channel_mixers",
    "list_mixers",
    "register_channel_mixer",
    "register_mixer",
]


MIXERS = Registry("token mixer")
CHANNEL_MIXERS = Registry("channel mixer")


def register_mixer(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: register a token mixer ``Mixer(dim, **options)`` under ``name``."""
    return MIXERS.register(name)


def register_channel_mixer(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: register a channel mixer (a block's MLP slot) ``Mixer(dim, **options)`` under ``name``."""
    return CHANNEL_MIXERS.register(name)


def list_mixers() -> list[str]:
    """Names of all registered token mixers, sorted."""
    return MIXERS.names()


def list_channel_mixers() -> list[str]:
    """Names of all registered channel mixers, sorted."""
    return CHANNEL_MIXERS.names()


def create_mixer(spec: Spec, dim: int, *, context: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Build the token mixer a spec names, for ``dim`` channels, with ``options`` (every one is applied or the call
    raises, naming the accepted ones): ``create_mixer("attention", 64, head_dim=16)``. ``context`` is what the
    builder knows about the surroundings (``grid``, ``img_size``), passed only to mixers that ask for it."""
    return MIXERS.create(spec, dim, context=context, **options)


def create_channel_mixer(spec: Spec, dim: int, *, context: Mapping[str, Any] | None = None, **options: Any) -> Any:
    """Build the channel mixer a spec names, for ``dim`` channels, with ``options`` (as ``create_mixer``)."""
    return CHANNEL_MIXERS.create(spec, dim, context=context, **options)
