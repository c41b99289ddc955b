"""Registries of named building blocks, built from *specs*.

A spec is a name (``"pooling"``) or a mapping holding the name plus options (``{"name": "attention",
"head_dim": 32}``, what a Hydra config gives). :class:`Registry` maps names to classes or factory functions;
``create(spec, *args, **context)`` calls the registered entry with the spec's options as keyword arguments, so a
misspelt option raises an error listing the accepted ones, and an unknown name an error listing the registered
names. *Context* entries (what the builder knows: ``grid``, ``img_size``, ``drop_path``, ...) are passed only if
the entry's signature names them, and never over a spec option of the same name: an entry that can take any
grid simply does not ask for it.

Token mixers (``MIXERS``) map a channels-last grid ``(B, H, W, C)`` to the same shape and mix across tokens;
channel mixers (``CHANNEL_MIXERS``, the MLP slot of a block) have the same interface but mix each token's channels
only. The backbone builder keeps its other slots (stem, downsampling, block, extras, head) in registries of the
same class (``mixerzoo.models.registry``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "CHANNEL_MIXERS",
    "MIXERS",
    "Registry",
    "Spec",
    "create_channel_mixer",
    "create_mixer",
    "did_you_mean",
    "list_channel_mixers",
    "list_mixers",
    "plain",
    "register_channel_mixer",
    "register_mixer",
    "split_spec",
]


Spec = str | Mapping[str, Any]  # a registered name, or a mapping with "name" plus options


def did_you_mean(name: str, choices: Iterable[str], show: Callable[[str], str] = repr) -> str:
    """``" Did you mean 'attention'?"`` for the close matches of a misspelt ``name`` among ``choices`` (each written
    by ``show``); ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(show(c) for c in close)}?" if close else ""


def plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) to plain Python lists/dicts, leaving other values alone."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    return value


def split_spec(spec: str | Mapping[str, Any], kind: str = "spec") -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a spec."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        options = plain(spec)
        if "name" not in options:
            raise ValueError(f"A {kind} spec mapping needs a 'name' key; got keys {sorted(options)}.")
        return options.pop("name"), options
    raise TypeError(
        f"A {kind} spec is a name or a mapping with 'name' plus options; got {type(spec).__name__}: {spec!r}."
    )


class Registry:
    """Named classes or factories of one kind (``kind`` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a class or factory under ``name``."""

        def decorator(entry: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not entry:
                raise ValueError(
                    f"{self.kind} name {name!r} is already registered by {self._entries[name].__qualname__}."
                )
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            hint = did_you_mean(name, self.names())
            raise ValueError(f"Unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names())}.")
        return self._entries[name]

    def create(self, spec: str | Mapping[str, Any], *args: Any, **context: Any) -> Any:
        """Build ``spec``: ``entry(*args, **options, **wanted_context)``."""
        name, options = split_spec(spec, self.kind)
        entry = self.get(name)
        parameters = inspect.signature(entry).parameters
        positional = list(parameters)[: len(args)]
        accepted = [p for p in parameters if p not in ("self", *positional)]
        unknown = sorted(set(options) - set(accepted))
        if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            raise TypeError(f"{self.kind} {name!r} got unknown option(s) {unknown}; it accepts {accepted}.")
        wanted_context = {k: v for k, v in context.items() if k in accepted and k not in options}
        return entry(*args, **options, **wanted_context)


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


def create_mixer(spec: str | Mapping[str, Any], dim: int, **context: Any) -> Any:
    """Build the token mixer a spec names, for ``dim`` channels (context: see the module docstring)."""
    return MIXERS.create(spec, dim, **context)


def create_channel_mixer(spec: str | Mapping[str, Any], dim: int, **context: Any) -> Any:
    """Build the channel mixer a spec names, for ``dim`` channels."""
    return CHANNEL_MIXERS.create(spec, dim, **context)
