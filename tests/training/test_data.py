"""The training data path: the stateful batch sampler and worker-independent augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mixerzoo.training.config import register_configs
from mixerzoo.training.data import EpochBatchSampler, create_datasets, train_batches, train_loader

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def test_epoch_batch_sampler_resumes_mid_epoch_and_follows_the_epoch() -> None:
    sampler = EpochBatchSampler(100, 8, num_batches=10, seed=3, rank=1, world_size=2)
    for epoch, start in ((0, 0), (2, 4), (5, 10)):
        sampler.set_epoch(epoch, start)
        expected = train_batches(100, 8, epoch, 3, rank=1, world_size=2)[start:10]
        assert [[i for _, i in batch] for batch in sampler] == expected and len(sampler) == 10 - start
        assert all(e == epoch for batch in sampler for e, _ in batch)
    with pytest.raises(ValueError, match="outside the epoch's 10 batches"):
        sampler.set_epoch(0, 11)


def _batches(num_workers: int, epoch: int) -> list[torch.Tensor]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["aug=deit", "aug.re_prob=0", "data.in_chans=3", f"data.num_workers={num_workers}"]
        )
    cfg.data.mean, cfg.data.std = [0.5] * 3, [0.5] * 3
    train_ds, _ = create_datasets(cfg.data, cfg.aug, seed=0)
    sampler = EpochBatchSampler(len(train_ds), 16, num_batches=3, seed=0)
    loader = train_loader(train_ds, sampler, cfg.data, cfg.aug, torch.device("cpu"))
    sampler.set_epoch(epoch)
    return [x for x, _ in loader]


def test_augmentation_in_workers_depends_on_the_sample_not_the_worker() -> None:
    """RandAugment + random crops with 1 or 2 workers: the same images; another epoch: other augmentations."""
    one, two = _batches(1, epoch=0), _batches(2, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert not torch.equal(_batches(2, epoch=1)[0], one[0])
