"""One source per model, one build function: every named model built from Python, from its YAML config and (for
the names the zoo registers in timm) from ``timm.create_model`` is the same model — the same state-dict keys and
shapes and the same MACs — at two image sizes (grid-bound mixers built for each)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn

from mixerzoo.models import build_model, layout_config, list_layouts
from mixerzoo.models.macs import count_macs
from mixerzoo.models.registry import LAYOUTS
from tests.conftest import compose_model_config

SIZES = (224, 160)  # 160: a multiple of 32 (Strip-MLP's grids) and of 16 (Hydra-ViT's patches)
NUM_CLASSES = 10


def _fingerprint(model: nn.Module, img_size: int) -> tuple[dict[str, tuple[int, ...]], int]:
    with torch.device("meta"):
        inputs = torch.empty(1, 3, img_size, img_size)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return shapes, count_macs(model.eval(), inputs).total


def _entry_points(name: str, img_size: int) -> dict[str, Any]:
    data = {"num_classes": NUM_CLASSES, "in_chans": 3, "img_size": img_size}
    builds = {
        "python": lambda: build_model(name, data),
        "yaml": lambda: build_model(compose_model_config(name), data),
    }
    if LAYOUTS.get(name).timm:
        builds["timm"] = lambda: timm.create_model(name, num_classes=NUM_CLASSES, img_size=img_size)
    return builds


@pytest.mark.slow
@pytest.mark.parametrize("name", list_layouts())
def test_every_entry_point_builds_the_same_model(name: str) -> None:
    for img_size in SIZES:
        fingerprints = {}
        for entry, build in _entry_points(name, img_size).items():
            with torch.device("meta"):
                model = build()
            fingerprints[entry] = _fingerprint(model, img_size)
        (reference_shapes, reference_macs), *_ = fingerprints.values()
        for entry, (shapes, macs) in fingerprints.items():
            assert shapes == reference_shapes, f"{name} at {img_size}: {entry} builds other parameters"
            assert macs == reference_macs > 0, f"{name} at {img_size}: {entry} counts {macs} MACs, not {reference_macs}"


@pytest.mark.parametrize("name", list_layouts())
def test_yaml_config_is_generated_from_the_layout(name: str) -> None:
    """``configs/model/<name>.yaml`` is the layout's generated text (``python tools/model_configs.py --write``)."""
    path = compose_model_config.__globals__["CONFIG_DIR"] / "model" / f"{name}.yaml"
    assert path.read_text() == layout_config(name), f"{path} is stale: run python tools/model_configs.py --write"


def test_every_model_config_names_a_layout_or_is_the_timm_config() -> None:
    from tools.model_configs import stale_configs

    assert stale_configs() == []


def test_a_spec_option_the_data_decides_must_agree_with_the_data() -> None:
    with pytest.raises(ValueError, match=r"img_size=64 in the model spec but 32 from the data"):
        build_model({"name": "metaformer_tiny", "img_size": 64}, {"num_classes": 10, "in_chans": 1, "img_size": 32})


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'caformer_s18'"):
        build_model("caformer_s81")


def test_the_models_do_not_import_hydra() -> None:
    """``mixerzoo.models`` (and ``import mixerzoo``) build every model without Hydra or OmegaConf loaded."""
    code = "import sys, mixerzoo, mixerzoo.models; print(sorted({'hydra', 'omegaconf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
