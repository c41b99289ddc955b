"""Image folders never lose data or hold-out in silence: a root without its train/val splits is an error (timm falls
back to the root, so validation ran on the training images), an empty class folder and an unreadable image are named,
a small training set's samples left out of every epoch are logged, and the loader workers default from the CPUs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from mixerzoo.training import data
from mixerzoo.training.config import register_configs
from mixerzoo.training.data import EpochBatchSampler, create_datasets, log_unused_samples, train_loader

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def folder_cfg(root: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["data=folder", f"data.root={root}", "data.img_size=16", *overrides])
    return cfg


def images(folder: Path, count: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def tree(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            images(root / split / name, count)
    return root


@pytest.mark.parametrize(
    ("layout", "missing"),
    [
        ({"": {"ant": 3, "bee": 3}}, "'train'"),  # bare class folders: no split at all
        ({"train": {"ant": 3, "bee": 3}}, "'validation'"),  # train/ only
    ],
    ids=["class-folders-only", "train-only"],
)
def test_a_root_without_its_splits_is_an_error_not_validation_on_training_images(
    tmp_path: Path, layout: dict[str, dict[str, int]], missing: str
) -> None:
    """Before: timm's create_dataset fell back to the root for the missing split, and the run reported a top-1
    measured on the images it trained on ("6 train / 6 val images")."""
    cfg = folder_cfg(tree(tmp_path / "data", layout))
    with pytest.raises(FileNotFoundError, match=rf"(?s)has no {missing} split .*training images.*/train/<class_name>/"):
        create_datasets(cfg.data, cfg.aug)


def test_a_single_archive_for_both_splits_is_an_error(tmp_path: Path) -> None:
    archive = tmp_path / "all.tar"
    archive.write_bytes(b"")
    cfg = folder_cfg(archive)
    with pytest.raises(FileNotFoundError, match="is one file: the train and the val split would both read it"):
        create_datasets(cfg.data, cfg.aug)


@pytest.mark.parametrize("val_name", ["val", "validation", "valid"])
def test_the_val_split_is_found_under_timms_names_and_is_held_out(tmp_path: Path, val_name: str) -> None:
    root = tree(tmp_path / "data", {"train": {"ant": 4, "bee": 4}, val_name: {"ant": 1, "bee": 1}})
    cfg = folder_cfg(root)
    train_ds, val_ds = create_datasets(cfg.data, cfg.aug)
    assert (len(train_ds), len(val_ds)) == (8, 2)
    train_files, val_files = set(train_ds.filenames(absolute=True)), set(val_ds.filenames(absolute=True))
    assert not train_files & val_files and all(f"/{val_name}/" in f for f in val_files)


def test_an_empty_class_folder_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: 3 class folders, one empty, gave 2 classes without a word."""
    root = tree(tmp_path / "data", {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    (root / "train" / "cat").mkdir()
    (root / "val" / "cat").mkdir()
    cfg = folder_cfg(root)
    with caplog.at_level(logging.WARNING):
        create_datasets(cfg.data, cfg.aug)
    assert cfg.data.num_classes == 2
    warnings = [r.getMessage() for r in caplog.records if "without images are not classes" in r.getMessage()]
    assert len(warnings) == 2 and all("(cat)" in w and "2 classes" in w for w in warnings)


def test_an_unreadable_image_is_named_by_its_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tree(tmp_path / "data", {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    broken = root / "train" / "ant" / "0.png"
    broken.write_bytes(b"not a png")
    cfg = folder_cfg(root)
    train_ds, _ = create_datasets(cfg.data, cfg.aug)
    index = train_ds.filenames(absolute=True).index(str(broken))
    with caplog.at_level(logging.WARNING):
        image, label = train_ds[index]
    assert isinstance(image, torch.Tensor) and label == 0  # replaced by the next image, as timm does
    assert any(str(broken) in r.getMessage() and "unreadable image" in r.getMessage() for r in caplog.records)


def test_samples_left_out_of_every_epoch_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """120 images with batch 64: 56 (47 %) were dropped from every epoch without a word."""
    with caplog.at_level(logging.INFO):
        log_unused_samples(120, 64, limited=False)
        log_unused_samples(1437, 1408, limited=False)
        log_unused_samples(120, 32, limited=True)  # limit_train_batches asked for it
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(levels) == 2
    assert (
        levels[0][0] == logging.WARNING and "the last 56 (47%)" in levels[0][1] and "Lower batch_size" in levels[0][1]
    )
    assert levels[1][0] == logging.INFO and "the last 29 (2%)" in levels[1][1]


@pytest.mark.parametrize(("cpus", "local_processes", "workers"), [(2, 1, 1), (16, 1, 8), (16, 2, 7), (96, 8, 8)])
def test_folder_workers_default_from_the_cpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpus: int, local_processes: int, workers: int
) -> None:
    """Before: data=folder asked for 8 workers on a 2-core machine (torch warned twice)."""
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_processes))
    root = tree(tmp_path / "data", {"train": {"ant": 2, "bee": 2}, "val": {"ant": 1, "bee": 1}})
    cfg = folder_cfg(root)
    assert cfg.data.num_workers is None
    train_ds, _ = create_datasets(cfg.data, cfg.aug)
    sampler = EpochBatchSampler(len(train_ds), 2, 0)
    loader = train_loader(train_ds, sampler, cfg.data, cfg.aug, torch.device("cpu"))
    assert loader.loader.loader.num_workers == workers  # TrainBatches -> PrefetchLoader -> DataLoader
    assert folder_cfg(root, "data.num_workers=3").data.num_workers == 3  # a set count is kept
    assert os.cpu_count()  # the machine's own count is not what a container's affinity allows
