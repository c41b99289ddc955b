"""The class count of the data (issue 16 item 4): ``data=folder`` takes it from the class folders instead of the
schema's old default of 10, and a ``data.num_classes`` too small for the labels is a clear error when the datasets
are built, not ``index 7 is out of bounds`` at the first step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from mixerzoo import train
from mixerzoo.training.data import create_datasets

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_train(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def make_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    """An ImageFolder tree: ``classes`` maps each split to its class folders (two 16x16 PNGs each)."""
    rng = np.random.default_rng(0)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return root


@pytest.fixture
def three_classes(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "data", {"train": ["ant", "bee", "cat"], "val": ["ant", "bee", "cat"]})


def folder_cfg(root: Path, *overrides: str) -> Any:
    return compose_train("data=folder", f"data.root={root}", "data.img_size=32", "data.num_workers=0", *overrides)


def test_folder_config_does_not_inherit_a_class_count() -> None:
    """Before: the schema's ``num_classes: 10`` won over data/folder.yaml's ``???``."""
    assert compose_train("data=folder").data.num_classes is None


def test_folder_class_count_comes_from_the_class_folders(tmp_path: Path, three_classes: Path) -> None:
    """``train.setup`` builds the datasets first, then a model with one output per class folder."""
    cfg = folder_cfg(three_classes, f"output_dir={tmp_path / 'run'}")
    evaluation, train_ds = train.setup(cfg)
    assert cfg.data.num_classes == 3
    assert evaluation.net.num_classes == 3
    assert len(train_ds) == 6


def test_folder_class_count_too_small_is_a_clear_error(three_classes: Path) -> None:
    cfg = folder_cfg(three_classes, "data.num_classes=2")
    with pytest.raises(ValueError, match=r"data\.num_classes=2 is too small.*labels up to 2.*data\.num_classes=3"):
        create_datasets(cfg.data, cfg.aug)


def test_folder_class_count_larger_than_the_folders_is_kept(three_classes: Path) -> None:
    """A head larger than the data (e.g. an ImageNet subset with the 1000-class head) is allowed."""
    cfg = folder_cfg(three_classes, "data.num_classes=5")
    create_datasets(cfg.data, cfg.aug)
    assert cfg.data.num_classes == 5


def test_folder_splits_with_different_classes_are_an_error(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"train": ["ant", "bee", "cat"], "val": ["ant", "cat"]})
    cfg = folder_cfg(root)
    with pytest.raises(ValueError, match=r"different class folders.*only in train: \['bee'\]"):
        create_datasets(cfg.data, cfg.aug)


def test_digits_with_too_few_classes_is_a_clear_error() -> None:
    """Before: ``data.num_classes=1`` on digits failed at the first step with 'index 7 is out of bounds'."""
    cfg = compose_train("data.num_classes=1")
    with pytest.raises(ValueError, match=r"data\.num_classes=1 is too small for the digits data.*data\.num_classes=10"):
        create_datasets(cfg.data, cfg.aug)


def test_digits_class_count_may_be_left_to_the_data() -> None:
    cfg = compose_train("data.num_classes=null")
    create_datasets(cfg.data, cfg.aug)
    assert cfg.data.num_classes == 10


def test_fake_data_needs_a_class_count() -> None:
    cfg = compose_train("data=fake", "data.num_classes=null", "data.img_size=16")
    with pytest.raises(ValueError, match=r"data=fake .*data\.num_classes=1000"):
        create_datasets(cfg.data, cfg.aug)
