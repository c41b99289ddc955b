"""The training data path: the stateful batch sampler and worker-independent augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mixerzoo.training.config import register_configs
from mixerzoo.training.data import EpochBatchSampler, create_datasets, epoch_order, rank_batches, train_loader

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def positions(order: list[int], batches: list[list[int]]) -> list[int]:
    where = {index: i for i, index in enumerate(order)}
    return [where[index] for batch in batches for index in batch]


def test_rank_batches_are_distributed_samplers_shards_from_the_start() -> None:
    """From position 0 the batches are DistributedSampler(drop_last=True)'s shards: runs started before the sampler
    learnt to resume at any sample keep their order."""
    for world_size, rank in ((1, 0), (2, 1), (3, 2)):
        sampler = torch.utils.data.DistributedSampler(range(100), world_size, rank, seed=3, drop_last=True)
        sampler.set_epoch(5)
        shard = list(sampler)
        expected = [shard[i : i + 8] for i in range(0, len(shard) - 7, 8)]
        got = rank_batches(epoch_order(100, 5, 3), 0, len(expected), 8, rank, world_size)
        assert got == expected


@pytest.mark.parametrize(
    ("before", "after"), [((1, 32), (2, 16)), ((2, 16), (1, 32)), ((1, 32), (2, 32)), ((2, 8), (3, 8))]
)
@pytest.mark.parametrize("stop_after", [0, 1, 2, 3])
def test_resume_with_other_process_counts_continues_at_the_same_sample(
    before: tuple[int, int], after: tuple[int, int], stop_after: int
) -> None:
    """(processes, batch size) before and after a stop after ``stop_after`` micro-steps: together the ranks
    consume one contiguous stretch of the epoch's global order, so the samples trained before and after the stop
    are a prefix of that order, none skipped or repeated; with the same global batch, every step after the
    resume takes exactly the samples the uninterrupted run (with the new process count) takes at that step."""
    num_samples, epoch, seed = 1437, 2, 0
    order = epoch_order(num_samples, epoch, seed)
    (w0, b0), (w1, b1) = before, after
    samplers = [EpochBatchSampler(num_samples, b0, seed, rank, w0) for rank in range(w0)]
    for sampler in samplers:
        sampler.set_epoch(epoch, 0, stop_after)
    trained = [positions(order, [[i for _, i in batch] for batch in step]) for step in zip(*samplers, strict=True)]
    start = stop_after * b0 * w0  # the checkpoint's samples_in_epoch
    steps_left = (num_samples // w1 // b1 * b1 * w1 - start) // (b1 * w1)
    resumed = [EpochBatchSampler(num_samples, b1, seed, rank, w1) for rank in range(w1)]
    for sampler in resumed:
        sampler.set_epoch(epoch, start, steps_left)
    after_steps = [positions(order, [[i for _, i in batch] for batch in step]) for step in zip(*resumed, strict=True)]
    seen = [p for step in trained + after_steps for p in step]
    assert sorted(seen) == list(range(len(seen))) and len(seen) == len(set(seen))
    if b0 * w0 == b1 * w1:
        straight = [EpochBatchSampler(num_samples, b1, seed, rank, w1) for rank in range(w1)]
        for sampler in straight:
            sampler.set_epoch(epoch, 0, stop_after + steps_left)
        steps = [[list(batch) for batch in step] for step in zip(*straight, strict=True)]
        assert [[list(batch) for batch in step] for step in zip(*resumed, strict=True)] == steps[stop_after:]


def test_epoch_batch_sampler_follows_the_epoch_and_checks_its_range() -> None:
    sampler = EpochBatchSampler(100, 8, seed=3, rank=1, world_size=2)
    sampler.set_epoch(4, 16, 5)
    assert len(sampler) == 5 and all(e == 4 for batch in sampler for e, _ in batch)
    with pytest.raises(ValueError, match="do not fit the 100 training samples"):
        sampler.set_epoch(0, 16, 6)  # 16 + 6 x 16 > 100


def _batches(num_workers: int, epoch: int) -> list[torch.Tensor]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=["aug=deit", "aug.re_prob=0", "data.in_chans=3", f"data.num_workers={num_workers}"]
        )
    cfg.data.mean, cfg.data.std = [0.5] * 3, [0.5] * 3
    train_ds, _ = create_datasets(cfg.data, cfg.aug, seed=0)
    sampler = EpochBatchSampler(len(train_ds), 16, seed=0)
    loader = train_loader(train_ds, sampler, cfg.data, cfg.aug, torch.device("cpu"))
    sampler.set_epoch(epoch, 0, 3)
    return [x for x, _ in loader]


def test_augmentation_in_workers_depends_on_the_sample_not_the_worker() -> None:
    """RandAugment + random crops with 1 or 2 workers: the same images; another epoch: other augmentations."""
    one, two = _batches(1, epoch=0), _batches(2, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    assert not torch.equal(_batches(2, epoch=1)[0], one[0])


def test_datasets_use_the_one_registry_and_unknown_names_get_close_matches() -> None:
    from mixerzoo.registry import Registry
    from mixerzoo.training.data import DATASETS

    assert isinstance(DATASETS, Registry) and {"digits", "fake", "folder", "pathfinder"} <= set(DATASETS.names())
    with pytest.raises(ValueError, match=r"Unknown dataset 'digit'. Did you mean 'digits'\?"):
        DATASETS.get("digit")
