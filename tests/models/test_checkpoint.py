"""Checkpoint loading: equal outputs for equal weights against timm, the official repositories' key layouts,
files read with weights_only, and errors that name what does not fit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import mixerzoo
from mixerzoo.models.checkpoint import CheckpointError, read_checkpoint, read_state_dict
from tests.conftest import build_model


def _perturbed_timm(name: str) -> torch.nn.Module:
    """timm's model with every tensor moved off its init value (so norms, scales and biases all matter)."""
    ref = timm.create_model(name)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref.eval()


# The official MlpHead LayerNorm has eps 1e-5 and timm's 1e-6: compare with timm's value, test the default apart.
TIMM_EQUIVALENT = {
    "poolformerv2_s12": {},
    "convformer_s18": {"head": {"mlp_norm_eps": 1e-6}},
    "caformer_s18": {"head": {"mlp_norm_eps": 1e-6}},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TIMM_EQUIVALENT))
def test_equal_outputs_to_timm_for_equal_weights(name: str) -> None:
    ref = _perturbed_timm(name)
    zoo = build_model(name, **TIMM_EQUIVALENT[name]).eval()
    assert mixerzoo.load_checkpoint(zoo, ref.state_dict()) == "zoo/timm"
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (zoo(x) - ref(x)).abs().max() < 1e-4
        zoo.double(), ref.double()
        x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # float64 convs are slow on CPU: a smaller input
        assert (zoo.forward_features(x) - ref.forward_features(x)).abs().max() < 1e-10
        assert (zoo(x) - ref(x)).abs().max() < 1e-10


def test_poolformer_v1_backbone_equals_timm_and_head_differs_only_by_norm_placement() -> None:
    ref = _perturbed_timm("poolformer_s12").double()
    zoo = build_model("poolformer_s12").eval()
    mixerzoo.load_checkpoint(zoo, ref.state_dict())
    zoo.double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert (zoo.forward_features(x) - ref.forward_features(x)).abs().max() < 1e-10
        # official v1: GroupNorm(1) on the map before pooling; timm: LayerNorm after pooling (not equivalent)
        assert (zoo(x) - ref(x)).abs().max() > 1e-3
        timm_head = build_model(
            "poolformer_s12", head={"norm": "layernorm", "norm_before_pool": False, "norm_eps": 1e-6}
        )
        mixerzoo.load_checkpoint(timm_head, ref.state_dict())
        assert (timm_head.double().eval()(x) - ref(x)).abs().max() < 1e-10


def _official_v1_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename zoo keys to the module names of sail-sg/poolformer's ``PoolFormer`` (written from that code's
    layout: ``patch_embed.proj``, a flat ``network`` list alternating block stages and ``PatchEmbed``
    downsamplers, ``layer_scale_1/2`` vectors, 1x1-conv MLP weights, ``norm`` and ``head``)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("stem.conv.", "patch_embed.proj.")
        key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", lambda m: f"network.{2 * int(m[1]) - 1}.proj.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", lambda m: f"network.{2 * int(m[1])}.{m[2]}.", key)
        key = re.sub(r"\.layer_scale(\d)\.scale$", r".layer_scale_\1", key)
        if re.search(r"\.mlp\.fc\d\.weight$", key):
            value = value[:, :, None, None]
        key = key.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[key] = value
    return out


def _official_v2_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename zoo keys to the module names of sail-sg/metaformer's ``MetaFormer`` (``downsample_layers[0]`` is the
    stem with ``post_norm``, ``downsample_layers[i]`` has ``pre_norm`` + ``conv``, blocks at ``stages.i.j``,
    final ``norm``, and ``head`` / ``head.fc1|norm|fc2`` for the MLP head)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace("stem.conv.", "downsample_layers.0.conv.").replace(
            "stem.norm.", "downsample_layers.0.post_norm."
        )
        key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace("head.norm.", "norm.").replace("head.fc.", "head.")
        out[key] = value
    return out


@pytest.mark.parametrize(
    "name, rename, layout",
    [
        ("poolformer_s12", _official_v1_keys, "official PoolFormer v1 (sail-sg/poolformer)"),
        ("identityformer_s12", _official_v2_keys, "official MetaFormer baselines (sail-sg/metaformer)"),
        ("randformer_s12", _official_v2_keys, "official MetaFormer baselines (sail-sg/metaformer)"),
        ("caformer_s18", _official_v2_keys, "official MetaFormer baselines (sail-sg/metaformer)"),
    ],
)
def test_official_layout_checkpoints_load(name: str, rename, layout: str) -> None:
    torch.manual_seed(1)
    source = build_model(name)
    official = rename(source.state_dict())
    assert not any(k.startswith("stem.") for k in official)
    torch.manual_seed(2)
    target = build_model(name)
    assert mixerzoo.load_checkpoint(target, official) == layout
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_pretrained_cfg_overlay_file_loads_an_official_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("randformer_s12")
    path = tmp_path / "randformer_s12.pth"
    torch.save(_official_v2_keys(source.state_dict()), path)
    loaded = timm.create_model("randformer_s12", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the frozen random matrices come from the checkpoint, not from a new draw
    assert torch.equal(
        loaded.stages[2].blocks[0].token_mixer.random_matrix, source.stages[2].blocks[0].token_mixer.random_matrix
    )


def test_training_checkpoint_files_unwrap_and_strip_prefixes(tmp_path: Path) -> None:
    model = build_model("poolformerv2_s12")
    wrapped = {"model": {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    path = tmp_path / "last.pth"
    torch.save(wrapped, path)
    fresh = build_model("poolformerv2_s12")
    mixerzoo.load_checkpoint(fresh, path)
    assert torch.equal(fresh.stem.conv.weight, model.stem.conv.weight)


def test_files_are_read_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Path("/")}, path)  # an arbitrary pickled object
    with pytest.raises(CheckpointError, match=r"holds Python objects \(pathlib\.PosixPath\).*refused") as info:
        read_state_dict(path)
    assert "weights_only=False" not in str(info.value)  # never suggest the unsafe load


def test_mismatched_checkpoints_name_missing_unexpected_and_misshaped_keys() -> None:
    model = build_model("poolformerv2_s12")
    state = model.state_dict()
    state.pop("head.fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["stem.conv.weight"] = torch.zeros(1, 1)
    with pytest.raises(ValueError) as info:
        mixerzoo.load_checkpoint(build_model("poolformerv2_s12"), state)
    message = str(info.value)
    assert "1 missing keys: head.fc.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "stem.conv.weight: checkpoint (1, 1) vs model (64, 3, 7, 7)" in message


def test_wrong_num_classes_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"head.fc.weight: checkpoint \(1000, 512\) vs model \(10, 512\)"):
        mixerzoo.load_checkpoint(
            build_model("poolformerv2_s12", num_classes=10), build_model("poolformerv2_s12").state_dict()
        )


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Checkpoint file not found"):
        mixerzoo.load_checkpoint(build_model("poolformerv2_s12"), tmp_path / "nope.pth")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_mapped_reads_take_both_file_formats(tmp_path: Path, zip_format: bool) -> None:
    """``mmap=True`` maps zip-format files; a legacy-format one (``_use_new_zipfile_serialization=False``, which
    ``torch.load(mmap=True)`` refuses) is read in full instead of being called corrupt."""
    saved = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(saved, path, _use_new_zipfile_serialization=zip_format)
    for mmap in (False, True):
        loaded = read_checkpoint(path, mmap=mmap)
        assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], saved["model"]["w"])
