"""``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` is as strict and as clear as
the zoo's own loader: a file written for another model, an empty file, random bytes or a pickle of Python objects is
an error that names the file (or the mismatched keys), never random weights behind a warning, and never an
invitation to load with ``weights_only=False``. What timm adapts itself (another class count, another number of
input channels) still loads."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

import mixerzoo  # noqa: F401  (registers the zoo in timm)
from mixerzoo.models.checkpoint import CheckpointError

NAME = "identityformer_s12"


def create(path: Path, **kwargs: object) -> nn.Module:
    return timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_a_file_for_another_model_is_an_error_listing_the_mismatch(tmp_path: Path, num_classes: int) -> None:
    """Another architecture's state dict (a ResNet's: no key in common). With ``num_classes`` other than the
    pretrained cfg's, timm loads non-strictly: it used to return random weights after one warning."""
    path = tmp_path / "resnet18_state_dict.pth"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), path)
    with pytest.raises(
        ValueError, match=r"does not fit identityformer_s12: \d+ missing keys: .*unexpected keys: "
    ) as info:
        create(path, num_classes=num_classes)
    assert "head.norm.bias" in str(info.value) and "conv1.weight" in str(info.value)


def test_a_file_of_another_size_names_the_misshaped_keys(tmp_path: Path) -> None:
    path = tmp_path / "s24.pth"
    torch.save(timm.create_model("identityformer_s24").state_dict(), path)
    with pytest.raises(ValueError, match=r"unexpected keys: stages\.0\.blocks\.[2-3]\."):
        create(path, num_classes=10)


def test_another_class_count_and_channel_count_still_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model(NAME)
    path = tmp_path / "own.pth"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # a train.py-style wrapper is unwrapped
    loaded = create(path, num_classes=10, in_chans=1)
    for key, value in source.state_dict().items():
        if not key.startswith(("head.fc.", "stem.conv.weight")):
            assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.get_classifier().out_features == 10 and loaded.stem.conv.weight.shape[1] == 1
    torch.testing.assert_close(loaded.stem.conv.weight[:, 0], source.stem.conv.weight.sum(1))


class Payload:
    pass


@pytest.mark.parametrize(
    "kind", ["empty", *(f"random bytes {seed}" for seed in range(8)), "truncated", "python objects", "missing"]
)
def test_unreadable_files_name_the_file_and_never_suggest_an_unsafe_load(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "weights.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("random bytes"):  # seeded: garbage fails in different places of the unpickler
        path.write_bytes(random.Random(int(kind.split()[-1])).randbytes(4096))
    elif kind == "truncated":
        torch.save(timm.create_model(NAME).state_dict(), path)
        path.write_bytes(path.read_bytes()[:100_000])
    elif kind == "python objects":
        torch.save({"state_dict": {}, "payload": Payload()}, path)
    expected = FileNotFoundError if kind == "missing" else CheckpointError
    with pytest.raises(expected) as info:
        create(path, num_classes=10)
    message = str(info.value)
    assert str(path) in message
    assert "weights_only=False" not in message
    pattern = {
        "empty": "is empty",
        "random bytes": "corrupt or not a PyTorch checkpoint",
        "truncated": "truncated, corrupt",
        "python objects": "holds Python objects",
        "missing": "not found",
    }[kind.rstrip("0123456789 ")]
    assert pattern in message
