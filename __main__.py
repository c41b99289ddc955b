"""``python -m mixerzoo``: what the zoo offers, from its registries and configs.

python -m mixerzoo            # token mixers, channel mixers, model configs, the zoo's timm names
python -m mixerzoo mixers     # one section: mixers | models | timm

Each mixer is listed with whether it needs the stage's token grid, its summary (the first paragraph of its
docstring, or of its module's where the entry defers to it) and the options it accepts, with their defaults.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import textwrap
from collections.abc import Sequence

import timm

from mixerzoo.mixers.registry import CHANNEL_MIXERS, MIXERS
from mixerzoo.models.registry import LAYOUTS
from mixerzoo.registry import Registry

# what the builder passes to the entries that ask for it: not options a user sets
CONTEXT = ("self", "dim", "grid", "img_size", "in_dim", "drop_path", "index")
WIDTH = 116


def grid_bound(entry: object) -> str:
    """``yes`` when the mixer must be built for one token grid, ``some options`` when some settings need one."""
    parameter = inspect.signature(entry).parameters.get("grid")
    if parameter is None:
        return "no"
    return "yes" if parameter.default is inspect.Parameter.empty else "some options"


GRID_WORDS = {"no": "any grid", "yes": "built for the stage's grid", "some options": "some options need the grid"}


def _first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line (with the next one where it ends in a colon: the formula it
    introduces), without reST's double backticks."""
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    text = paragraphs[0]
    if text.rstrip().endswith(":") and len(paragraphs) > 1:
        text += " " + paragraphs[1]
    return re.sub(r"``(.*?)``", r"\1", " ".join(text.split()))


def summary(entry: object) -> str:
    """The first paragraph of the entry's own docstring, or of its module's where the entry has none or defers to
    it ("see the module docstring")."""
    own = _first_paragraph(entry.__doc__)
    if own and "module docstring" not in own:
        return own
    return _first_paragraph(sys.modules[entry.__module__].__doc__) or own


def options(entry: object) -> str:
    """``name=default, ...`` of the options a spec may set (``name`` alone where there is no default); an entry that
    passes further options on says so."""
    words = []
    for name, parameter in inspect.signature(entry).parameters.items():
        if name in CONTEXT:
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            words.append(f"**{name} (passed on: see the summary)")
        elif parameter.default is inspect.Parameter.empty:
            words.append(name)
        else:
            words.append(f"{name}={parameter.default!r}")
    return ", ".join(words) or "none"


def _registry_lines(title: str, registry: Registry) -> list[str]:
    lines = [title]
    for name in registry.names():
        entry = registry.get(name)
        lines.append(f"  {name} ({GRID_WORDS[grid_bound(entry)]})")
        lines += textwrap.wrap(
            summary(entry), WIDTH, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False
        )
        lines += textwrap.wrap(
            f"options: {options(entry)}",
            WIDTH,
            initial_indent="    ",
            subsequent_indent="      ",
            break_on_hyphens=False,
        )
    return lines


def mixer_lines() -> list[str]:
    token = _registry_lines(
        "token mixers: model.mixer=<name>, or with options 'model.mixer={name:<name>,<option>:<value>}'", MIXERS
    )
    channel = _registry_lines(
        "channel mixers: model.block.mlp=<name>, or 'model.block.mlp={name:<name>,<option>:<value>}'", CHANNEL_MIXERS
    )
    return [*token, "", *channel]


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
