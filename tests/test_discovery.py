"""Discovery from the command line: ``python -m mixerzoo`` and ``train.py --help``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mixerzoo.mixers import list_channel_mixers, list_mixers
from mixerzoo.models import list_layouts

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, title: str) -> list[str]:
    lines = text.split(title, 1)[1].splitlines()[1:]
    return [
        line.strip().split(" | ")[0] for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("  "))]
    ]


def test_python_m_mixerzoo_lists_mixers_channel_mixers_and_model_configs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mixerzoo"], cwd=tmp_path, capture_output=True, text=True, check=True)
    text = out.stdout
    assert _section(text, "token mixers") == list_mixers()
    assert _section(text, "channel mixers") == list_channel_mixers()
    assert _section(text, "models (") == list_layouts()
    assert "  random | yes |" in text and "  strip_mlp | yes |" in text and "  pooling | no |" in text
    assert "  vim2_t\n" in text and "  caformer_s18 | no | CAFormer-S18" in text and "  vim2_t | yes | ViM2-T" in text
    assert "timm's own model (same architecture" in text


def test_train_help_offers_choices_not_building_blocks() -> None:
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True)
    groups = {line.split(":")[0] for line in out.stdout.splitlines() if ": " in line and not line.startswith(" ")}
    assert {"model", "data", "experiment", "sweep"} <= groups
    assert "recipe" not in groups
    assert "python -m mixerzoo" in out.stdout
