"""What the ranks of a ``torchrun`` job must agree on, with two real gloo ranks: the checkpoint ``resume=auto``
restores (rank 0 decides, also when it fails), which ranks a stop signal reached, and the Pathfinder cache (local
rank 0 generates, the others read it). The ranks are forked from the test process (no second import of torch and
timm), each given a piece of work; a rank that hangs fails the test after a timeout."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mixerzoo.models.checkpoint import CheckpointError
from mixerzoo.training import checkpoints, signals
from mixerzoo.training import pathfinder as pf

WORLD_SIZE = 2


def _as_rank(rank: int, folder: Path, work: Callable[[int], Any]) -> None:
    """A forked child: join the gloo group as ``rank`` (torchrun's environment variables set), run ``work(rank)``,
    and leave its result (or its exception) in ``folder``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
    os.environ["LOCAL_WORLD_SIZE"] = str(WORLD_SIZE)
    torch.set_num_threads(1)
    store = f"file://{folder / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        result: Any = ("ok", work(rank))
    except Exception as err:
        result = ("raised", err)
    finally:
        dist.destroy_process_group()
    (folder / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def on_two_ranks(folder: Path, work: Callable[[int], Any], timeout: float = 120) -> list[tuple[str, Any]]:
    """``work`` on ranks 0 and 1 of a two-process group: each rank's ("ok", result) or ("raised", exception)."""
    folder.mkdir(parents=True)
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_as_rank, args=(rank, folder, work)) for rank in range(WORLD_SIZE)]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + timeout
    for process in ranks:
        process.join(max(deadline - time.monotonic(), 0))
    hung = [rank for rank, process in enumerate(ranks) if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert not hung, f"rank(s) {hung} still waiting after {timeout} s: the ranks disagreed"
    return [pickle.loads((folder / f"rank{rank}.pkl").read_bytes()) for rank in range(WORLD_SIZE)]


def test_rank_0_decides_which_checkpoint_every_rank_resumes(tmp_path: Path) -> None:
    """Rank 1 cannot read ``last.pth`` (as if it were being replaced as it looked): it still restores ``last.pth``,
    rank 0's choice, not the older step checkpoint it could read. Where rank 0 finds nothing readable, every rank
    raises its error instead of rank 1 resuming alone (and the next collective hanging)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    position = {"version": 2, "updates_per_epoch": 6, "world_size": 1}
    torch.save({**position, "epoch": 1, "samples_in_epoch": 0, "global_step": 6}, run_dir / "last.pth")
    torch.save({**position, "epoch": 0, "samples_in_epoch": 128, "global_step": 4}, run_dir / "step_00000004.pth")
    read_checkpoint = checkpoints.read_checkpoint

    def unreadable_on(rank: int, names: tuple[str, ...]) -> Callable[..., Any]:
        def read(path: str, mmap: bool = False) -> Any:
            if os.path.basename(path) in names:
                raise CheckpointError(f"Cannot read checkpoint {path!r} on rank {rank}")
            return read_checkpoint(path, mmap=mmap)

        return read

    def resume_auto(blind: dict[int, tuple[str, ...]]) -> Callable[[int], Any]:
        def work(rank: int) -> Any:
            checkpoints.read_checkpoint = unreadable_on(rank, blind.get(rank, ()))  # this forked rank's own module
            return checkpoints.resolve_resume("auto", str(run_dir))

        return work

    results = on_two_ranks(tmp_path / "a", resume_auto({1: ("last.pth",)}))
    assert results == [("ok", str(run_dir / "last.pth"))] * 2
    results = on_two_ranks(tmp_path / "b", resume_auto({0: ("last.pth", "step_00000004.pth")}))
    for outcome, error in results:
        assert outcome == "raised" and isinstance(error, CheckpointError), results
        assert "no readable checkpoint" in str(error) and "on rank 0" in str(error)


def test_a_stop_signal_on_one_rank_is_known_to_every_rank(tmp_path: Path) -> None:
    """SIGUSR1 reached rank 1 only: both ranks stop, and rank 0 (which writes summary.json) can name it."""

    def work(rank: int) -> Any:
        signals._received = "SIGUSR1" if rank == 1 else None
        return signals.stop_signal_anywhere(torch.device("cpu"), WORLD_SIZE), signals.stop_signals(WORLD_SIZE)

    assert on_two_ranks(tmp_path / "ranks", work) == [("ok", (True, {1: "SIGUSR1"}))] * 2


def test_local_rank_0_fills_the_pathfinder_cache_and_the_other_ranks_read_it(tmp_path: Path) -> None:
    """Rank 0 generates (slowly, so rank 1 looks before the cache exists); rank 1 must wait and read the cache,
    never generate the split itself."""
    cache = tmp_path / "cache"
    generate = pf.generate

    def work(rank: int) -> Any:
        def slow_generate(*args: Any, **kwargs: Any) -> Any:
            assert rank == 0, "rank 1 generated the split instead of reading rank 0's cache"
            time.sleep(1.0)
            return generate(*args, **kwargs)

        pf.generate = slow_generate
        return pf.PathfinderDataset("train", 12, 32, "easy", seed=3, cache_dir=cache).images

    results = on_two_ranks(tmp_path / "ranks", work)
    assert [outcome for outcome, _ in results] == ["ok", "ok"], results
    np.testing.assert_array_equal(results[1][1], results[0][1])
    assert [p.name for p in cache.iterdir()] == [f"pathfinder32_easy_seed3_train_12_v{pf.GENERATOR_VERSION}.npy"]
