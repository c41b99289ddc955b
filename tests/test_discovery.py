"""Discovery from the command line: ``python -m mixerzoo`` and ``train.py --help``."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from mixerzoo.mixers import list_channel_mixers, list_mixers
from mixerzoo.mixers.registry import CHANNEL_MIXERS, MIXERS
from mixerzoo.models import list_layouts

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> list[str]:
    """The entry names of one section: its lines indented by exactly two spaces, up to the next blank line."""
    lines = text.split(title, 1)[1].splitlines()[1:]
    lines = lines[: next(i for i, line in enumerate(lines) if not line.strip())]
    return [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("   ")]


def _entries(text: str) -> dict[str, str]:
    """name -> its block of text (heading, summary and options joined into one line) of the mixer sections."""
    blocks: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            name = line.split()[0]
            blocks[name] = line.strip()
        elif line.startswith("    ") and name is not None:
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks


@pytest.mark.slow
def test_python_m_mixerzoo_lists_mixers_channel_mixers_and_model_configs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mixerzoo"], cwd=tmp_path, capture_output=True, text=True, check=True)
    text = out.stdout
    assert _section(text, "token mixers") == list_mixers()
    assert _section(text, "channel mixers") == list_channel_mixers()
    assert _section(text, "models (") == list_layouts()
    assert "  random (built for the stage's grid)" in text and "  pooling (any grid)" in text
    assert "  strip_mlp (built for the stage's grid)" in text
    assert "  caformer_s18 | no | CAFormer-S18" in text and "  vim2_t | yes | ViM2-T" in text
    assert "timm's own model (same architecture" in text


@pytest.mark.slow
def test_python_m_mixerzoo_gives_whole_summaries_and_every_option() -> None:
    """Each mixer's summary is a whole paragraph of its docstring (not its first line cut mid-sentence, and not a
    pointer to "the module docstring"), and every option its constructor accepts is listed with its default."""
    out = subprocess.run([sys.executable, "-m", "mixerzoo", "mixers"], capture_output=True, text=True, check=True)
    blocks = _entries(out.stdout)
    for registry in (MIXERS, CHANNEL_MIXERS):
        for name in registry.names():
            entry = registry.get(name)
            block = blocks[name]
            assert "module docstring" not in block, block
            text, listed = block.split(")", 1)[1].rsplit(" options: ", 1)
            text = text.strip()
            assert text.endswith((".", ")", "x", "drop")), f"{name}: summary cut: {text[-60:]}"
            for option, parameter in inspect.signature(entry).parameters.items():
                if option in ("self", "dim", "grid", "img_size") or parameter.kind is parameter.VAR_KEYWORD:
                    continue
                assert f"{option}={parameter.default!r}" in listed, (name, option)
    assert "Efficient Global Token Mixers" in blocks["aff"]  # the line the old summary stopped before
    assert "quasiseparable SSM mixer" in blocks["hydra"]


@pytest.mark.slow
def test_train_help_offers_choices_not_building_blocks() -> None:
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    groups = {line.split(":")[0] for line in out.stdout.splitlines() if ": " in line and not line.startswith(" ")}
    assert {"model", "data", "experiment", "sweep"} <= groups
    assert "recipe" not in groups
    assert "python -m mixerzoo" in out.stdout
