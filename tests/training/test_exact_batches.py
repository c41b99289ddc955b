"""The training batches are a function of (seed, epoch, position) only, so a resume at any step sees the batches of
the uninterrupted run: the prefetcher prepares batch k+1 before step k's checkpoint, and before it drew batch k+1's
augmentation (without workers), its random erasing and the loader's seed from the global RNGs that the checkpoint
saves, which put the saved state a batch ahead. Now the data path leaves the global RNGs alone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from timm.data import Mixup

from mixerzoo.training.config import register_configs
from mixerzoo.training.data import EpochBatchSampler, create_datasets, isolated_rngs, train_loader

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()
BATCH, STEPS = 16, 4

CONFIGS = {
    "digits default, no workers": ["data.num_workers=0"],
    "deit aug (RandAugment, erasing), no workers": ["aug=deit", "data.in_chans=3", "data.num_workers=0"],
    "deit aug, 1 worker": ["aug=deit", "data.in_chans=3", "data.num_workers=1"],
    "erasing + mixup/cutmix, no workers": ["aug=deit", "data.in_chans=3", "data.num_workers=0", "+mixup=true"],
}


def global_rng_states() -> tuple[Any, ...]:
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist()


def loader_for(overrides: list[str], ignored: tuple[signal.Signals, ...] = ()) -> tuple[Any, EpochBatchSampler]:
    with_mixup = "+mixup=true" in overrides
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[o for o in overrides if o != "+mixup=true"])
    cfg.data.mean, cfg.data.std = [0.5] * cfg.data.in_chans, [0.5] * cfg.data.in_chans
    train_ds, _ = create_datasets(cfg.data, cfg.aug, seed=0)
    sampler = EpochBatchSampler(len(train_ds), BATCH, seed=0)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=10) if with_mixup else None
    loader = train_loader(train_ds, sampler, cfg.data, cfg.aug, torch.device("cpu"), mixup=mixup, ignored=ignored)
    return loader, sampler


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_batches_from_any_position_are_those_of_the_uninterrupted_epoch(overrides: list[str]) -> None:
    loader, sampler = loader_for(overrides)
    sampler.set_epoch(2, 0, STEPS)
    torch.manual_seed(0)
    straight = list(loader)
    for stop in (1, STEPS - 1):
        resumed, sampler = loader_for(overrides)  # a new process: new loader, other global RNG history
        torch.manual_seed(stop)
        random.seed(stop)
        sampler.set_epoch(2, stop * BATCH, STEPS - stop)
        for (x, y), (x0, y0) in zip(resumed, straight[stop:], strict=True):
            assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_loading_batches_draws_nothing_from_the_global_rngs(overrides: list[str]) -> None:
    """The global RNGs are what a checkpoint saves and what the model's drop path and dropout draw from: the batches
    the prefetcher prepares ahead must not move them."""
    loader, sampler = loader_for(overrides)
    sampler.set_epoch(0, 0, STEPS)
    torch.manual_seed(5)
    before = global_rng_states()
    batches = list(loader)
    assert len(batches) == STEPS and global_rng_states() == before


def test_isolated_rngs_depend_on_the_seed_only_and_restore_the_global_state() -> None:
    torch.manual_seed(1)
    before = global_rng_states()
    with isolated_rngs(7):
        first = (random.random(), np.random.rand(), torch.rand(()).item())
    assert global_rng_states() == before
    torch.rand(3)
    with isolated_rngs(7):
        assert (random.random(), np.random.rand(), torch.rand(()).item()) == first


START_THREAD_AT_FORK = threading.Event()


def start_idle_thread_in_the_child() -> None:
    """A stand-in for the libraries whose fork hooks or initialisers start a thread in a worker before its
    ``worker_init_fn`` runs: that thread has the signal mask of the forking thread."""
    if START_THREAD_AT_FORK.is_set():
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()


os.register_at_fork(after_in_child=start_idle_thread_in_the_child)


@pytest.mark.parametrize("thread_started_at_fork", [False, True], ids=["plain worker", "thread started at fork"])
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGUSR1])
def test_loader_workers_survive_the_stop_signals(stop_signal: signal.Signals, thread_started_at_fork: bool) -> None:
    """``torchrun``'s agent stops its ranks with a signal to each rank's process group, and Slurm signals every
    process of a job: the workers get it too. Before, they died (``DataLoader worker ... is killed by signal``) and
    took the training process down before it could write its stop checkpoint. A worker thread that existed before
    ``worker_init_fn`` blocked the signals took them with their default action (killed) until the workers were
    forked with the signals already blocked."""
    loader, sampler = loader_for(["data.num_workers=1"], ignored=(signal.SIGTERM, signal.SIGUSR1))
    sampler.set_epoch(0, 0, STEPS)
    if thread_started_at_fork:
        START_THREAD_AT_FORK.set()
    try:
        iterator = iter(loader)
        next(iterator)
    finally:
        START_THREAD_AT_FORK.clear()
    (worker,) = loader.loader.loader._iterator._workers  # TrainBatches -> PrefetchLoader -> DataLoader's workers
    subprocess.run(["kill", "-s", stop_signal.name.removeprefix("SIG"), str(worker.pid)], check=True)  # not the parent
    time.sleep(0.5)
    assert worker.is_alive()
    assert len(list(iterator)) == STEPS - 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_erasing_and_mixup_are_seeded_and_leave_the_cuda_rng_alone() -> None:
    """Random erasing draws its pixels from the device's generator: seeded there, and put back afterwards."""
    overrides = CONFIGS["erasing + mixup/cutmix, no workers"]
    device = torch.device("cuda", torch.cuda.current_device())

    def batches(start: int) -> list[torch.Tensor]:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[o for o in overrides if o != "+mixup=true"])
        cfg.data.mean, cfg.data.std = [0.5] * 3, [0.5] * 3
        train_ds, _ = create_datasets(cfg.data, cfg.aug, seed=0)
        sampler = EpochBatchSampler(len(train_ds), BATCH, seed=0)
        mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=10)
        loader = train_loader(train_ds, sampler, cfg.data, cfg.aug, device, mixup=mixup)
        sampler.set_epoch(1, start * BATCH, STEPS - start)
        return [x for x, _ in loader]

    torch.cuda.manual_seed(3)
    before = torch.cuda.get_rng_state(device)
    straight = batches(0)
    assert torch.equal(torch.cuda.get_rng_state(device), before)
    torch.cuda.manual_seed(4)
    for x, x0 in zip(batches(2), straight[2:], strict=True):
        assert torch.equal(x, x0)


def test_a_process_that_fails_with_its_loader_workers_running_still_exits(tmp_path: Path) -> None:
    """The workers ignore SIGTERM, and multiprocessing's exit handler ends leftover workers with SIGTERM and then
    waits for them: a training process failing with a loader still referenced (an exception's traceback holds it)
    hung at exit. Now they are ended with SIGKILL first."""
    script = tmp_path / "fail.py"
    script.write_text(
        "import signal, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_exact_batches import loader_for, STEPS\n"
        "loader, sampler = loader_for(['data.num_workers=1'], ignored=(signal.SIGTERM, signal.SIGUSR1))\n"
        "sampler.set_epoch(0, 0, STEPS)\n"
        "batches = iter(loader)\n"
        "next(batches)\n"
        "raise RuntimeError('a failure with the loader running')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "RuntimeError: a failure with the loader running" in done.stderr, done.stderr
