"""Grid-bound mixers are built for ``data.img_size`` when train.py builds the model."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from mixerzoo.models import build_model
from mixerzoo.training.config import register_configs
from tests.conftest import CONFIG_DIR


def _build(*overrides: str) -> torch.nn.Module:
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=fake", "data.num_classes=10", *overrides])
    return build_model(cfg.model, cfg.data).eval()


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=metaformer_s12", "model.mixer=random"],
        ["model=metaformer_s12", "model.mixer=strip_mlp"],
        ["model=randformer_s12"],
    ],
)
def test_grid_bound_models_follow_the_data_size(overrides: list[str]) -> None:
    model = _build(*overrides, "data.img_size=64")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape[-1] == 10


def test_timm_models_get_no_img_size() -> None:
    """A timm model that takes no ``img_size`` builds as before."""
    assert isinstance(_build("model=timm", "model.name=resnet18", "data.img_size=64"), torch.nn.Module)
