"""The one registry mechanism of the zoo: named entries built from *specs*.

A spec is a name (``"pooling"``) or a mapping holding the name plus options (``{"name": "attention",
"head_dim": 32}``, what a Hydra config gives). :class:`Registry` maps names to classes or factory functions;
``create(spec, *args, context=..., **options)`` calls the registered entry with every option of the spec and of
``options`` as keyword arguments:

- an option the entry does not accept raises an error that names the accepted ones (never dropped in silence);
- an unknown name raises an error listing the registered names, with the closest ones first;
- *context* (what a caller knows about the surroundings, e.g. the builder's ``grid``, ``img_size``,
  ``drop_path``) travels separately, in ``context``, and is passed only where the entry's signature names it: an
  entry that can take any grid simply does not ask for it. A spec that sets a context key raises (the builder
  decides the stage's grid and a block's drop path; the model's options set them). Context a registry
  declares ``required`` (the model registries: ``device`` and ``dtype``, timm's factory arguments) must be
  accepted by every entry when it is set, so a module is never built on the CPU in float32 in silence.

Every registry of the zoo is one of these: token and channel mixers (``mixerzoo.mixers.registry``), the builder's
stems, downsamplings, blocks, extras and heads and the named model layouts (``mixerzoo.models.registry``), and the
datasets (``mixerzoo.training.data``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["Registry", "Spec", "did_you_mean", "plain", "spec_label", "split_spec"]

Spec = str | Mapping[str, Any]  # a registered name, or a mapping with "name" plus options


def did_you_mean(name: str, choices: Iterable[str], show: Callable[[str], str] = repr) -> str:
    """``" Did you mean 'attention'?"`` for the close matches of a misspelt ``name`` among ``choices`` (each written
    by ``show``); ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(show(c) for c in close)}?" if close else ""


def plain(value: Any) -> Any:
    """OmegaConf containers (from Hydra) to plain Python lists/dicts, leaving other values alone."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [plain(v) for v in value]
    return value


def split_spec(spec: Spec, kind: str = "spec") -> tuple[str, dict[str, Any]]:
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


def spec_label(spec: Any) -> str:
    """A spec as short text: ``pooling``, ``aff`` (from ``{name: aff, ...}``), ``sepconv/sepconv/attention/...`` for
    one spec per stage; '' for None."""
    spec = plain(spec)
    if isinstance(spec, dict):
        return str(spec.get("name", spec))
    if isinstance(spec, list):
        return "/".join(spec_label(s) for s in spec)
    return "" if spec is None else str(spec)


def _accepted_options(entry: Callable[..., Any], num_args: int) -> tuple[list[str], bool]:
    """The keyword options ``entry`` takes after ``num_args`` positional arguments, and whether it takes any."""
    parameters = inspect.signature(entry).parameters
    positional = list(parameters)[:num_args]
    accepted = [
        name
        for name, p in parameters.items()
        if name not in ("self", *positional) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return accepted, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class Registry:
    """Named classes or factories of one kind (``kind`` names it in error messages)."""

    def __init__(self, kind: str, required_context: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.required_context = required_context  # context every entry must take when it is set (not None)
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register a class or factory under ``name``."""

        def decorator(entry: Any) -> Any:
            if name in self._entries and self._entries[name] is not entry:
                owner = getattr(self._entries[name], "__qualname__", type(self._entries[name]).__name__)
                raise ValueError(f"{self.kind} name {name!r} is already registered by {owner}.")
            self._entries[name] = entry
            return entry

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def unknown_name_message(self, name: str) -> str:
        return f"Unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} Registered: {', '.join(self.names())}."

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise ValueError(self.unknown_name_message(name))
        return self._entries[name]

    def accepted_options(self, name: str, num_args: int = 1) -> list[str]:
        """The options entry ``name`` takes after ``num_args`` positional arguments (its context included)."""
        return _accepted_options(self.get(name), num_args)[0]

    def create(self, spec: Spec, *args: Any, context: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Build ``spec``: ``entry(*args, **spec_options, **options, **wanted_context)``.

        ``options`` are applied like the spec's own (an option given both ways is an error); ``context`` entries
        only where the entry names them (an option that sets one is an error)."""
        name, spec_options = split_spec(spec, self.kind)
        both = sorted(set(spec_options) & set(options))
        if both:
            raise TypeError(f"{self.kind} {name!r}: option(s) {both} given both in the spec and as keywords.")
        options = {**spec_options, **plain(options)}
        entry = self.get(name)
        accepted, takes_any = _accepted_options(entry, len(args))
        unknown = sorted(set(options) - set(accepted))
        if unknown and not takes_any:
            raise TypeError(f"{self.kind} {name!r} got unknown option(s) {unknown}; it accepts {accepted}.")
        context = dict(context or {})
        both = sorted(set(options) & set(context))
        if both:
            raise TypeError(
                f"{self.kind} {name!r}: {both} set in the spec, but the caller decides them (the builder gives "
                f"{', '.join(f'{k}={context[k]!r}' for k in both)}); remove them from the spec."
            )
        refused = [k for k in self.required_context if context.get(k) is not None and k not in accepted]
        if refused and not takes_any:
            raise TypeError(
                f"{self.kind} {name!r} cannot take {refused} (given {[str(context[k]) for k in refused]}): add "
                f"{' and '.join(refused)} arguments to its constructor and create its parameters and buffers with them."
            )
        wanted_context = {k: v for k, v in context.items() if k in accepted}
        return entry(*args, **options, **wanted_context)
