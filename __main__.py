"""``python -m mixerzoo``: what the zoo offers, from its registries and configs.

python -m mixerzoo            # token mixers, channel mixers, model configs, the zoo's timm names
python -m mixerzoo mixers     # one section: mixers | models | timm
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

import timm

from mixerzoo.mixers.registry import CHANNEL_MIXERS, MIXERS
from mixerzoo.models.registry import LAYOUTS
from mixerzoo.registry import Registry


def grid_bound(entry: object) -> str:
    """``yes`` when the mixer must be built for one token grid, ``optional`` when some settings need one."""
    parameter = inspect.signature(entry).parameters.get("grid")
    if parameter is None:
        return "no"
    return "yes" if parameter.default is inspect.Parameter.empty else "some options"


def _summary(entry: object) -> str:
    """The first line of the entry's own docstring, else of its module's."""
    doc = entry.__doc__ or sys.modules[entry.__module__].__doc__ or ""
    return inspect.cleandoc(doc).splitlines()[0] if doc.strip() else ""


def _registry_lines(title: str, registry: Registry) -> list[str]:
    entries = [(name, registry.get(name)) for name in registry.names()]
    return [title, *(f"  {name} | {grid_bound(entry)} | {_summary(entry)}" for name, entry in entries)]


def mixer_lines() -> list[str]:
    token = _registry_lines("token mixers (model.mixer=<name>): name | grid-bound | summary", MIXERS)
    channel = _registry_lines("channel mixers (model.block.mlp=<name>): name | grid-bound | summary", CHANNEL_MIXERS)
    return token + channel


def model_lines() -> list[str]:
    lines = ["models (python train.py model=<name>; mixerzoo.create_model(<name>)): name | in timm | summary"]
    for name in LAYOUTS.names():
        layout = LAYOUTS.get(name)
        lines.append(f"  {name} | {'yes' if layout.timm else 'no'} | {layout.summary}")
    return [
        *lines,
        "in timm = yes: timm.create_model(<name>) builds the same model. no: the comparison backbones, and the zoo's",
        "builder versions of timm's PoolFormer/ConvFormer/CAFormer names, for which timm.create_model(<name>) is",
        "timm's own model (same architecture and parameter count, timm's key layout; mixerzoo.load_checkpoint",
        "converts its weights).",
    ]


def timm_lines() -> list[str]:
    names = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith("mixerzoo.")]
    return ["the zoo's timm names (timm.create_model(<name>) after import mixerzoo):", *(f"  {n}" for n in names)]


SECTIONS = {"mixers": mixer_lines, "models": model_lines, "timm": timm_lines}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mixerzoo", description="List what the zoo offers.")
    parser.add_argument("section", nargs="?", choices=sorted(SECTIONS), help="one section (default: all)")
    args = parser.parse_args(argv)
    for name, lines in SECTIONS.items():
        if args.section in (None, name):
            print("\n".join(lines()), end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
