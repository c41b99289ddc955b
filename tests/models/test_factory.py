"""``mixerzoo.create_model``: every named model one Python call away, with overrides."""

from __future__ import annotations

import pytest
import timm
import torch

import mixerzoo
from tests.conftest import MODEL_CONFIGS


def test_every_layout_has_a_model_config() -> None:
    assert mixerzoo.list_layouts() == [c for c in MODEL_CONFIGS if c != "timm"] and len(MODEL_CONFIGS) >= 40


@pytest.mark.slow
@pytest.mark.parametrize("name", [c for c in MODEL_CONFIGS if c != "timm"])
def test_every_model_config_builds_from_python_with_overrides(name: str) -> None:
    with torch.device("meta"):
        model = mixerzoo.create_model(name, num_classes=17)
    classifier = model.get_classifier()
    assert getattr(classifier, "fc2", classifier).out_features == 17


def test_overrides_reach_nested_slots_and_lists() -> None:
    mixers = ["pooling", "pooling", "attention", "attention"]
    with torch.device("meta"):
        model = mixerzoo.create_model("caformer_s18", mixer=mixers, block={"norm": "groupnorm1"}, num_classes=5)
    assert [type(s.blocks[0].token_mixer).__name__ for s in model.stages] == ["Pooling"] * 2 + ["Attention"] * 2
    assert type(model.stages[0].blocks[0].norm1).__name__ == "GroupNorm1"
    assert model.head.fc.fc2.out_features == 5  # the config's MLP head kept


def test_a_name_without_config_is_timm_and_errors_are_clear() -> None:
    with torch.device("meta"):
        assert type(mixerzoo.create_model("resnet18")) is type(timm.create_model("resnet18"))
    with pytest.raises(ValueError, match=r"no weights of its own; load a file with mixerzoo\.load_checkpoint"):
        mixerzoo.create_model("caformer_s18", pretrained=True)
    with pytest.raises(ValueError, match="Unknown model 'nope': neither a zoo layout nor a timm model"):
        mixerzoo.create_model("nope")
