"""The token-mixer registry.

Every token mixer maps a channels-last grid ``(B, H, W, C)`` to the same shape. Mixers register under a
name with :func:`register_mixer` and are built with :func:`create_mixer` from a *spec*: either the name
(``"pooling"``) or a mapping holding the name plus options (``{"name": "attention", "head_dim": 32}``),
which is what a Hydra config gives.

Options from the spec are passed to the constructor as they are, so a misspelt option raises.
The backbone builder also offers *context* (e.g. ``grid``, the stage's ``(H, W)`` at the model's
``img_size``); a mixer receives only the context entries its constructor names, so a mixer that can take
any grid simply does not ask for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch.nn as nn

__all__ = ["create_mixer", "get_mixer_class", "list_mixers", "mixer_spec_name", "register_mixer"]

_MIXERS: dict[str, type[nn.Module]] = {}


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: register a token mixer under ``name``."""

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"Mixer name {name!r} is already registered by {_MIXERS[name].__qualname__}.")
        _MIXERS[name] = cls
        return cls

    return decorator


def list_mixers() -> list[str]:
    """Names of all registered mixers, sorted."""
    return sorted(_MIXERS)


def get_mixer_class(name: str) -> type[nn.Module]:
    if name not in _MIXERS:
        raise ValueError(f"Unknown token mixer {name!r}. Registered mixers: {', '.join(list_mixers())}.")
    return _MIXERS[name]


def _split_spec(spec: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        options = {str(k): _plain(v) for k, v in spec.items()}
        if "name" not in options:
            raise ValueError(f"A mixer spec mapping needs a 'name' key; got keys {sorted(options)}.")
        return options.pop("name"), options
    raise TypeError(
        f"A mixer spec is a name or a mapping with 'name' plus options; got {type(spec).__name__}: {spec!r}."
    )


def _plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) to plain Python lists/dicts, leaving other values alone."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def mixer_spec_name(spec: str | Mapping[str, Any]) -> str:
    """The registered name a spec refers to."""
    return _split_spec(spec)[0]


def create_mixer(spec: str | Mapping[str, Any], dim: int, **context: Any) -> nn.Module:
    """Build the mixer a spec names, for ``dim`` channels.

    ``context`` entries are passed only if the mixer's constructor has a parameter of that name; spec options
    are always passed, so unknown options raise ``TypeError`` naming the mixer and its accepted options.
    """
    name, options = _split_spec(spec)
    cls = get_mixer_class(name)
    parameters = inspect.signature(cls).parameters
    accepted = [p for p in parameters if p not in ("self", "dim")]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise TypeError(f"Mixer {name!r} got unknown option(s) {unknown}; it accepts {accepted}.")
    wanted_context = {k: v for k, v in context.items() if k in parameters and k not in options}
    return cls(dim, **options, **wanted_context)
