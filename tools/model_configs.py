"""Write or check ``configs/model/<name>.yaml`` for every zoo layout: each file is generated from the layout in
Python (``mixerzoo.models.layout_config``), so a config can never drift from the model it names.

    python tools/model_configs.py --write     # after adding or changing a layout
    python tools/model_configs.py --check     # exit 1 if any file differs, is missing, or names no layout

``configs/model/timm.yaml`` (any timm model by name) is the one hand-written model config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixerzoo.models import layout_config, list_layouts
from mixerzoo.training.config import CONFIG_DIR

HAND_WRITTEN = ("timm",)


def stale_configs(folder: Path = CONFIG_DIR / "model") -> list[str]:
    """The problems ``--check`` reports: files that differ from their layout, are missing, or name no layout."""
    problems = []
    for name in list_layouts():
        path = folder / f"{name}.yaml"
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif path.read_text() != layout_config(name):
            problems.append(f"{path} differs from its layout")
    for path in sorted(folder.glob("*.yaml")):
        if path.stem not in list_layouts() and path.stem not in HAND_WRITTEN:
            problems.append(f"{path} names no layout (register it in a family file under models/)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="write every layout's config")
    action.add_argument("--check", action="store_true", help="report configs that differ from their layouts")
    args = parser.parse_args(argv)
    folder = CONFIG_DIR / "model"
    if args.write:
        for name in list_layouts():
            (folder / f"{name}.yaml").write_text(layout_config(name))
        print(f"wrote {len(list_layouts())} model configs to {folder}")
    problems = stale_configs(folder)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
