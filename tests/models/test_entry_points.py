"""One source per model, one build function: every named model built from Python, from its YAML config and (for
the names the zoo registers in timm) from ``timm.create_model`` is the same model — the same state-dict keys and
shapes and the same module tree with the same settings (so the same MACs at any input) — at two image sizes
(grid-bound mixers built for each)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn

from mixerzoo.models import build_model, layout_config, list_layouts
from mixerzoo.models.registry import LAYOUTS
from tests.conftest import compose_model_config

SIZES = (224, 160)  # 160: a multiple of 32 (Strip-MLP's grids) and of 16 (Hydra-ViT's patches)
NUM_CLASSES = 10


PLAIN = (int, float, str, bool, type(None))


def _settings(module: nn.Module) -> dict[str, Any]:
    """A module's own plain settings (kernel sizes, strides, grid sizes, head counts, flags...): the public
    attributes that are numbers, strings or tuples of them."""
    return {
        k: v
        for k, v in vars(module).items()
        if not k.startswith("_")
        and (isinstance(v, PLAIN) or (isinstance(v, tuple) and all(isinstance(e, PLAIN) for e in v)))
    }


def _fingerprint(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], list[tuple[str, str, dict[str, Any]]]]:
    """State-dict shapes and the module tree with each module's class and settings: what decides a model's output
    and its MACs at a given input (a forward under a MAC counter costs seconds per large model; this, nothing)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tree = [(name, type(m).__qualname__, _settings(m)) for name, m in model.named_modules()]
    return shapes, tree


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
            fingerprints[entry] = _fingerprint(model)
        (reference_shapes, reference_tree), *_ = fingerprints.values()
        for entry, (shapes, tree) in fingerprints.items():
            assert shapes == reference_shapes, f"{name} at {img_size}: {entry} builds other parameters"
            differ = [(a, b) for a, b in zip(tree, reference_tree, strict=False) if a != b][:1]
            assert tree == reference_tree, f"{name} at {img_size}: {entry} builds another module tree: {differ}"


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


def test_model_timm_builds_timms_own_model_of_a_name_the_zoo_also_builds() -> None:
    with torch.device("meta"):
        zoo = build_model("caformer_s18")
        theirs = build_model({"name": "caformer_s18", "source": "timm"}, {"num_classes": 10, "img_size": 64})
    assert type(zoo).__module__ == "mixerzoo.models.backbone"
    assert type(theirs).__module__ == "timm.models.metaformer" and theirs.num_classes == 10


def test_model_configs_of_earlier_versions_still_build() -> None:
    """The stored config of a checkpoint or run folder written before model specs had names."""
    data = {"num_classes": 3, "in_chans": 1, "img_size": 32}
    builder = {"_target_": "mixerzoo.MetaFormer", "mixer": "pooling", "depths": [1, 1], "dims": [8, 16]}
    with torch.device("meta"):
        assert build_model(builder, data).num_classes == 3
        model = build_model({"_target_": "timm.create_model", "model_name": "resnet10t", "pretrained": False}, data)
    assert type(model).__name__ == "ResNet" and model.num_classes == 3


def test_a_config_renamed_to_another_layout_raises() -> None:
    cfg = compose_model_config("vim2_t", ["model.name=vim2_s"])
    with pytest.raises(ValueError, match=r"model.name='vim2_s' on the config of 'vim2_t'.*model=vim2_s"):
        build_model(cfg)


def test_keyword_options_merge_into_the_specs_nested_options() -> None:
    spec = {"name": "caformer_s18", "head": {"name": "mlp", "dropout": 0.5}}
    with torch.device("meta"):
        model = build_model(spec, num_classes=5, head={"hidden_ratio": 2})
    assert model.head.fc.fc1.out_features == 2 * 512 and model.head.fc.drop.p == 0.5


def test_a_spec_cannot_set_what_the_builder_decides() -> None:
    with pytest.raises(TypeError, match=r"\['drop_path'\] set in the spec, but the caller decides them"):
        build_model("metaformer_tiny", num_classes=10, block={"drop_path": 0.3})


def test_none_options_reach_timm_registered_layouts() -> None:
    """``downsample=None`` is an option, not "unset": the timm-registered layouts refuse it like the builder ones."""
    for name in ("poolformerv2_s12", "identityformer_s12"):
        with pytest.raises(ValueError), torch.device("meta"):
            build_model(name, num_classes=10, downsample=None)
