"""Every model config composes inside train.yaml and instantiates the way train.py does it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from timm.layers import DropPath

from mixerzoo import train  # noqa: F401  (registers the training schema and resolvers train.yaml uses)
from mixerzoo.mixers import create_mixer, list_mixers
from mixerzoo.models import MetaFormer, build_model
from tests.conftest import CONFIG_DIR, MODEL_CONFIGS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_composes_in_train_yaml_and_builds(name: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    with torch.device("meta"):
        model = build_model(cfg.model, num_classes=17, drop_path_rate=0.25)
    classifier = model.get_classifier()
    classifier = getattr(classifier, "fc2", classifier)  # the MLP head's last layer
    assert classifier.out_features == 17
    if isinstance(model, MetaFormer):  # (configs/model/timm.yaml builds any timm model)
        rates = [m.drop_prob for m in model.stages[-1].blocks[-1].modules() if isinstance(m, DropPath)]
        assert rates and rates[0] == pytest.approx(0.25)


def test_ci_runs_the_readme_test_command() -> None:
    lines = (ROOT / ".ci/run").read_text().strip().splitlines()
    commands = [line for line in lines if "pytest" in line and not line.startswith("#")]  # the README's command
    assert len(commands) == 1 and commands[0] in (ROOT / "README.md").read_text()
    script, *options = lines[-1].split()
    assert script == ".ci/timm_model_tests.sh" and (ROOT / script).is_file() and options == ["-n", "auto"]


@pytest.mark.slow
@pytest.mark.parametrize("mixer", list_mixers())
def test_comparison_backbone_takes_every_mixer_by_override(mixer: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model=metaformer_s12", f"model.mixer={mixer}"])
    model = build_model(cfg.model, num_classes=10)
    expected = type(create_mixer(mixer, 64, context={"grid": (56, 56)}))
    assert all(type(b.token_mixer) is expected for s in model.stages for b in s.blocks)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
