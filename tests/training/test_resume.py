"""Resume anywhere and fail clearly: resume with another number of processes (sample-exact, the lr of an
uninterrupted run), step checkpoints, which checkpoint resume=auto takes, version-1 checkpoints, stop signals,
unreadable checkpoints, a full disk, the order of the run's writes, a used run directory, a finished run,
eval_only's model config, and fine-tuning onto another class count.

In-process runs use ``train.run`` on composed configs; the N -> M resumes run ``torchrun`` with 2 processes (gloo
on the CPU)."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

import mixerzoo
from mixerzoo import train
from mixerzoo.models import build_model
from mixerzoo.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from mixerzoo.training import checkpoints, outputs, signals
from mixerzoo.training.state import build_train_state

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
# 6 steps of 32 digits per epoch; no random augmentation, so runs with 1 and 2 processes see the same pixels
TINY = ["limit_train_batches=6", "logger.progress_bar=false", "runtime.num_threads=1", "aug.no_aug=true"]
TINY += ["logger.log_interval=1"]


def compose_train(output_dir: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", "batch_size=32", *TINY, *overrides])


def run(output_dir: Path, *overrides: str) -> float:
    """``train.run`` as ``python train.py <overrides>`` runs it: the overrides are this command line's (what
    ``train.command_overrides`` reports; the helper's fixed ones are left out, as a script's defaults would be)."""
    with mock.patch.object(train, "command_overrides", lambda: list(overrides)):
        return train.run(compose_train(output_dir, *overrides))


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def metric_columns(path: Path, *columns: str) -> list[tuple[float, ...]]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [tuple(row[c] for c in columns) for row in rows]


def metric_column(path: Path, column: str) -> list[float]:
    return [row[0] for row in metric_columns(path, column)]


def summary(path: Path) -> dict[str, Any]:
    return json.loads((path / "summary.json").read_text())


# --- N -> M processes -----------------------------------------------------------------------------------------
def cli(run_dir: Path, processes: int, *overrides: str) -> str:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    args = [sys.executable, *launcher, "train.py", "epochs=2", *TINY, f"hydra.run.dir={run_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def step_lrs(log: str) -> dict[tuple[int, int], str]:
    """(epoch, step) -> the lr logged after that optimizer step."""
    return {(int(e), int(s)): lr for e, s, lr in re.findall(r"epoch (\d)/\d step (\d+)/\d+ loss \S+ lr (\S+)", log)}


@pytest.mark.slow
def test_resume_on_another_number_of_processes_is_sample_exact(tmp_path: Path) -> None:
    """Reference: 1 process x batch 32, 2 epochs of 6 steps, a step checkpoint every 3 steps. A 2-process x 16 run
    (the same global batch, so the same samples per step) is stopped mid-epoch (step 3) and at an epoch's end
    (step 6) and resumed with 1 process, and mid-epoch with 2 processes; the reference is resumed mid-epoch (step 9)
    with 2 processes. Every resumed run ends with the reference's weights (float rounding of the
    gradient all-reduce) and logs the reference's lr at every step: no sample skipped or trained twice, the
    schedule at the right step. Rank 1 logs no epoch line and writes no metrics row of its own."""
    steps = ["checkpoint_every_steps=3", "checkpoint_keep=4"]
    reference_log = cli(tmp_path / "one", 1, "batch_size=32", *steps)
    two_log = cli(tmp_path / "two", 2, "batch_size=16", *steps)
    reference = load(tmp_path / "one" / "last.pth")
    two = load(tmp_path / "two" / "last.pth")
    two_summary = summary(tmp_path / "two")
    assert two_summary["world_size"] == 2 and two_summary["ranks_in_sync"] is True and len(two["rng"]) == 2
    assert_same_weights(two["model"], reference["model"])
    lrs = step_lrs(reference_log)
    assert len(lrs) == 12 and step_lrs(two_log) == lrs
    assert two_log.count("epoch 1: train loss") == 1 and metric_column(tmp_path / "two", "epoch") == [1, 2]
    cases = [("two", 1, 32, 3), ("two", 1, 32, 6), ("two", 2, 16, 3), ("one", 2, 16, 9)]
    for source, processes, batch, step in cases:
        run_dir = tmp_path / f"{source}_to_{processes}_at_{step}"
        log = cli(run_dir, processes, f"batch_size={batch}", f"resume={tmp_path / source / f'step_{step:08d}.pth'}")
        resumed = load(run_dir / "last.pth")
        assert resumed["global_step"] == 12 and resumed["world_size"] == processes
        assert log.count("epoch 2: train loss") == 1, run_dir.name  # rank 0's line only
        rank1_log = run_dir / "train_rank1.log"
        assert not rank1_log.exists() or "train loss" not in rank1_log.read_text(), run_dir.name
        if source == "two" and processes == 2:  # each rank ends with its own RNG states, not rank 0's
            for rank in range(2):
                for generator in ("python", "numpy"):
                    assert resumed["rng"][rank][generator] == two["rng"][rank][generator], (rank, generator)
            assert resumed["rng"][0]["numpy"] != resumed["rng"][1]["numpy"]
        assert_same_weights(resumed["model"], reference["model"])
        later = {key: lr for key, lr in lrs.items() if (key[0] - 1) * 6 + key[1] > step}
        assert step_lrs(log) == later, run_dir.name
        assert metric_columns(run_dir, "epoch", "lr", "top1") == metric_columns(tmp_path / "one", "epoch", "lr", "top1")
        # the epoch's train loss covers all its steps, before and after the resume
        assert metric_column(run_dir, "train_loss") == pytest.approx(metric_column(tmp_path / "one", "train_loss"))


def test_each_rank_restores_its_own_rng_states(tmp_path: Path) -> None:
    """A checkpoint of a 2-process run holds every rank's Python, numpy and torch RNG states; resumed with 2
    processes, rank 1 continues from its own (the N -> M test's runs draw too little from them to show this)."""
    cfg = compose_train(tmp_path / "a", "epochs=1")
    state = build_train_state(cfg, *train.setup(cfg))
    states = []
    for seed in (10, 11):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        states.append(checkpoints.rng_state())
    ckpt = {**checkpoints.make_checkpoint(cfg, state, states), "world_size": 2}
    torch.save(ckpt, tmp_path / "two_ranks.pth")
    cfg = compose_train(tmp_path / "b", "epochs=1", f"resume={tmp_path / 'two_ranks.pth'}")
    state = build_train_state(cfg, *train.setup(cfg))
    state.rank, state.world_size = 1, 2  # restore() as rank 1 of 2 sees it (no collective inside)
    assert checkpoints.restore(cfg, state)
    assert random.getstate() == states[1]["python"]
    np.testing.assert_array_equal(np.random.get_state()[1], states[1]["numpy"][1])
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])


def test_resume_with_another_global_batch_continues_the_schedule_at_the_same_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch-32 run stopped 128 samples into epoch 2 and resumed with batch 64 (what a 2-process run resumed
    with 1 process and the same per-process batch does): the schedule continues at step 5 of the batch-64 run
    (3 steps per epoch, +2), with the lr an uninterrupted batch-64 run has there, and trains the epoch's remaining
    64 samples: one step, not the 6 the old run had per epoch."""
    schedule = ["epochs=2", "sched.warmup_epochs=0.5"]
    run(tmp_path / "small", *schedule, "checkpoint_every_steps=2")
    caplog.set_level(logging.INFO, logger="train")
    run(tmp_path / "straight", *schedule, "batch_size=64", "limit_train_batches=3")
    straight_lrs = step_lrs(caplog.text)
    positions = []
    fit = train.fit

    def record(cfg: Any, state: Any) -> None:
        positions.append((state.epoch, state.samples_in_epoch, state.schedule_position))
        positions.append(state.optimizer.param_groups[-1]["lr"])
        fit(cfg, state)

    monkeypatch.setattr(train, "fit", record)
    resume = f"resume={tmp_path / 'small' / 'step_00000010.pth'}"  # step 10: 4 steps (128 samples) into epoch 2
    run(tmp_path / "resumed", *schedule, "batch_size=64", "limit_train_batches=3", resume)
    assert positions[0] == (1, 128, 5)
    assert f"{positions[1]:.3e}" == straight_lrs[(2, 2)]  # the lr after the uninterrupted run's 5th step
    resumed = load(tmp_path / "resumed" / "last.pth")
    assert resumed["global_step"] == 11 and resumed["epoch"] == 2
    lr = resumed["optimizer"]["param_groups"][0]["lr"]
    assert lr == load(tmp_path / "straight" / "last.pth")["optimizer"]["param_groups"][0]["lr"]


# --- step checkpoints -----------------------------------------------------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (not even ``finally`` writes of a checkpoint)."""


class DieAtForward(nn.Module):
    def __init__(self, model: nn.Module, at: int) -> None:
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                raise Killed
        return self.model(x)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # the checkpoints hold the bare model
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.load_state_dict(*args, **kwargs)


def test_step_checkpoints_rotate_and_a_kill_loses_only_the_steps_since_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ["epochs=2", "checkpoint_every_steps=2", "checkpoint_keep=2", "ema.enabled=true"]
    run(tmp_path / "straight", *extra)
    assert sorted(p.name for p in (tmp_path / "straight").glob("step_*.pth")) == [
        "step_00000010.pth",
        "step_00000012.pth",
    ]
    monkeypatch.setattr(train, "build_model", lambda spec, data: DieAtForward(build_model(spec, data), at=6 + 5))
    with pytest.raises(Killed):
        run(tmp_path / "killed", *extra)
    assert load(tmp_path / "killed" / "last.pth")["global_step"] == 6  # epoch 1's end: a whole epoch behind
    monkeypatch.undo()
    run(tmp_path / "killed", *extra, "resume=auto")  # picks step_00000010.pth, written after last.pth
    straight, resumed = load(tmp_path / "straight" / "last.pth"), load(tmp_path / "killed" / "last.pth")
    assert resumed["global_step"] == straight["global_step"] == 12
    assert_same_weights(resumed["model"], straight["model"])
    assert_same_weights(resumed["ema"], straight["ema"])
    assert metric_column(tmp_path / "killed", "train_loss") == pytest.approx(
        metric_column(tmp_path / "straight", "train_loss")
    )


# --- unreadable checkpoints and failed writes -------------------------------------------------------------------
class Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo this should never run",))


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a pattern its error must match)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.pth"
    torch.save({"model": {"w": torch.ones(2)}}, good)
    files = {
        "empty": (b"", r"is empty \(0 bytes\)"),
        "random bytes": (bytes(range(256)) * 8, r"corrupt or not a PyTorch checkpoint"),
        "truncated": (good.read_bytes()[:200], r"truncated, corrupt or not a PyTorch checkpoint"),
    }
    out = {}
    for name, (data, pattern) in files.items():
        path = folder / f"{name.replace(' ', '_')}.pth"
        path.write_bytes(data)
        out[name] = (path, pattern)
    pickled = folder / "pickled_code.pth"
    torch.save({"model": Payload()}, pickled)
    out["pickled code"] = (pickled, r"holds Python objects .*refused")
    return out


def assert_clear(err: BaseException, path: Path, pattern: str) -> None:
    message = str(err)
    assert str(path) in message and re.search(pattern, message), message
    assert "weights_only" not in message and "False" not in message, message  # never an invitation to load unsafely


def test_unreadable_checkpoints_name_the_file_and_the_problem_everywhere(tmp_path: Path) -> None:
    """The reader, the model loader, and train.py's three entries (resume, fine-tuning, eval_only), the last only
    for two of the files: they share the reader."""
    model = mixerzoo.create_model("metaformer_tiny", num_classes=10)
    for name, (path, pattern) in bad_checkpoints(tmp_path / "bad").items():
        calls = [lambda p=path: read_checkpoint(p), lambda p=path: load_checkpoint(model, p)]
        if name in ("empty", "pickled code"):
            calls += [
                lambda p=path: run(tmp_path / "resume", "epochs=1", f"resume={p}"),
                lambda p=path: run(tmp_path / "finetune", "epochs=1", f"checkpoint={p}"),
                lambda p=path: run(tmp_path / "eval", "eval_only=true", f"checkpoint={p}"),
            ]
        for call in calls:
            with pytest.raises(CheckpointError) as info:
                call()
            assert_clear(info.value, path, pattern)


def test_resume_auto_skips_an_unreadable_newest_checkpoint_and_refuses_when_none_is_readable(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1", "checkpoint_every_steps=4")
    (tmp_path / "step_00000099.pth").write_bytes(b"")  # the newest file, empty
    assert checkpoints.latest_checkpoint(str(tmp_path)) == str(tmp_path / "last.pth")
    for path in (tmp_path / "last.pth", tmp_path / "step_00000004.pth"):
        path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        checkpoints.latest_checkpoint(str(tmp_path))


def test_resume_auto_goes_by_training_progress_not_by_file_times(tmp_path: Path) -> None:
    """After ``cp -r`` a run directory's files get new times in listing order (``last.pth`` before ``step_*``), or
    equal ones at 1-s resolution: ``resume=auto`` still takes ``last.pth`` (epoch 1 done) over ``step_00000004.pth``
    (4 steps into epoch 1), and step checkpoints are pruned by their step, not their time."""
    run(tmp_path, "epochs=1", "checkpoint_every_steps=4")
    last, step = tmp_path / "last.pth", tmp_path / "step_00000004.pth"
    for last_time, step_time in ((1_000, 2_000), (1_000, 1_000)):
        os.utime(last, (last_time, last_time))
        os.utime(step, (step_time, step_time))
        assert checkpoints.latest_checkpoint(str(tmp_path)) == str(last)
    for number, when in ((2, 3_000), (10, 1_000), (6, 2_000)):
        path = tmp_path / f"step_{number:08d}.pth"
        path.write_bytes(step.read_bytes())
        os.utime(path, (when, when))
    assert [Path(p).name for p in checkpoints.step_checkpoints(str(tmp_path))] == [
        f"step_{number:08d}.pth" for number in (2, 4, 6, 10)
    ]


def test_a_full_disk_removes_the_temporary_file_keeps_the_last_checkpoint_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(tmp_path, "epochs=1")
    before = {name: (tmp_path / name).read_bytes() for name in ("best.pth", "last.pth")}
    save = torch.save

    def disk_full(obj: Any, f: Any) -> None:  # half a checkpoint written, then ENOSPC
        f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        OSError, match=r"Could not write .*(best|last)\.pth.*No space left on device; \d+ MiB free.*resume=auto"
    ) as info:
        run(tmp_path, "epochs=2", "resume=auto")
    monkeypatch.setattr(torch, "save", save)
    assert re.search(r"previous (best|last)\.pth \(if any\) is unchanged", str(info.value))
    assert not list(tmp_path.glob("*.tmp"))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


# --- the run directory ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_crash_between_the_writes_leaves_a_consistent_run_that_resume_repairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after epoch 2's last.pth and before its metrics rows: the resume writes them; killed after epoch
    2's best.pth and before last.pth: the resume trains epoch 2 again and best.pth matches what last.pth says."""
    run(tmp_path / "straight", "epochs=3")
    write_metrics = outputs.write_metrics

    def die_at_epoch_2(cfg: Any, output_dir: str, history: list[dict[str, Any]], repair: bool = False) -> None:
        if len(history) == 2 and not repair:
            raise Killed
        write_metrics(cfg, output_dir, history, repair)

    monkeypatch.setattr(outputs, "write_metrics", die_at_epoch_2)
    with pytest.raises(Killed):
        run(tmp_path / "a", "epochs=3")
    assert len(metric_columns(tmp_path / "a", "epoch")) == 1 and load(tmp_path / "a" / "last.pth")["epoch"] == 2
    monkeypatch.setattr(outputs, "write_metrics", write_metrics)
    run(tmp_path / "a", "epochs=3", "resume=auto")
    assert metric_columns(tmp_path / "a", "epoch", "top1") == metric_columns(tmp_path / "straight", "epoch", "top1")

    save_atomic = checkpoints.save_atomic

    def die_before_last(obj: dict[str, Any], path: str) -> None:
        if path.endswith("last.pth") and obj["epoch"] == 2:
            raise Killed
        save_atomic(obj, path)

    monkeypatch.setattr(checkpoints, "save_atomic", die_before_last)
    with pytest.raises(Killed):
        run(tmp_path / "b", "epochs=3")
    monkeypatch.setattr(checkpoints, "save_atomic", save_atomic)
    run(tmp_path / "b", "epochs=3", "resume=auto")
    last, best = load(tmp_path / "b" / "last.pth"), load(tmp_path / "b" / "best.pth")
    assert best["epoch"] == last["best"]["epoch"]  # best.pth holds the epoch last.pth calls the best
    assert metric_columns(tmp_path / "b", "epoch", "top1") == metric_columns(tmp_path / "straight", "epoch", "top1")


def test_a_used_run_directory_is_refused_without_resume(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1")
    before = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(FileExistsError, match=r"already holds a run \(last\.pth.*resume=auto.*hydra\.run\.dir"):
        run(tmp_path, "epochs=1")
    assert (tmp_path / "metrics.csv").read_text() == before


def test_a_finished_run_stays_finished(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1")
    summary = (tmp_path / "summary.json").read_text()
    assert json.loads(summary)["final_top1"] is not None
    run(tmp_path, "epochs=1", "resume=auto")
    assert (tmp_path / "summary.json").read_text() == summary
    (tmp_path / "summary.json").unlink()  # killed before its summary: the resume writes it from the history
    run(tmp_path, "epochs=1", "resume=auto")
    rewritten = json.loads((tmp_path / "summary.json").read_text())
    for key in ("best_top1", "final_top1", "final_top5", "train_images_per_sec", "epochs_completed"):
        assert rewritten[key] == pytest.approx(json.loads(summary)[key]), key
    (tmp_path / "summary.json").write_text(summary[: len(summary) // 2])  # torn: does not count as finished
    run(tmp_path, "epochs=1", "resume=auto")
    assert json.loads((tmp_path / "summary.json").read_text())["best_top1"] == pytest.approx(rewritten["best_top1"])


def test_version_1_history_merges_both_metrics_files(tmp_path: Path) -> None:
    """An epoch only metrics.csv holds (its JSON line lost) is kept; the JSON row wins where both have it; a torn CSV
    line and epochs past the checkpoint are left out."""
    (tmp_path / "metrics.csv").write_text("epoch,top1\n1,10.0\n2,20.0\n3,30.0\n4,40.0\n5\n")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "top1": 11.0}\n{"epoch": 2, "top1": 21.0}\n{"epo')
    history = checkpoints.history_from_metrics([str(tmp_path)], epochs=3)
    assert [(row["epoch"], row["top1"]) for row in history] == [(1, 11.0), (2, 21.0), (3, 30.0)]


def test_resuming_a_version_1_checkpoint_keeps_the_earlier_metrics_rows(tmp_path: Path) -> None:
    """A version-1 checkpoint (position in batches per rank, no metrics history): its epochs' rows come back from
    metrics.jsonl (the last of a repeated epoch, a torn line skipped, as version 1 appended them), so the resumed
    run's metrics files and summary still cover every epoch."""
    run(tmp_path, "epochs=1")
    ckpt = load(tmp_path / "last.pth")
    new_keys = ("history", "samples_in_epoch", "updates_per_epoch", "world_size", "epoch_loss_sum", "epoch_updates")
    torch.save(
        {**{k: v for k, v in ckpt.items() if k not in new_keys}, "batch_in_epoch": 0, "version": 1},
        tmp_path / "last.pth",
    )
    first = metric_columns(tmp_path, "epoch", "top1", "train_time")
    rows = (tmp_path / "metrics.jsonl").read_text()
    (tmp_path / "metrics.jsonl").write_text(rows + rows + '{"epoch": 2, "train_lo')
    run(tmp_path, "epochs=2", "resume=auto")
    assert metric_columns(tmp_path, "epoch", "top1", "train_time")[:1] == first
    assert metric_column(tmp_path, "epoch") == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3  # header and 2 rows
    assert summary(tmp_path)["epochs_completed"] == 2


# --- stop signals ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_stop_signal_ends_a_multirun_sweep_after_its_checkpoint_and_summary(tmp_path: Path) -> None:
    """Hydra's basic launcher runs a sweep's jobs one after another in one process. SIGUSR1 during job 0 (sent by
    the process to itself after epoch 1, as Slurm would): job 0 writes last.pth and its summary, and the process
    exits with status 0 instead of starting job 1 (which used to train one step and stop)."""
    script = (
        "import os, signal, sys\n"
        "from mixerzoo import train\n"
        "from mixerzoo.training import loop\n"
        "log_epoch = loop.log_epoch\n"
        "def log_then_signal(*args):\n"
        "    log_epoch(*args)\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "loop.log_epoch = log_then_signal\n"
        f"sys.argv = ['train.py', '--config-path', {str(CONFIG_DIR)!r}, '-m', 'seed=0,1', 'epochs=2', *sys.argv[1:]]\n"
        "train.main()\n"
    )
    args = [sys.executable, "-c", script, "limit_train_batches=2", "limit_val_batches=1", "logger.progress_bar=false"]
    args += ["runtime.num_threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([*args, f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True, text=True)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    (job_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # job 1 never started
    assert job_dir.name.split("_")[0] == "0", job_dir.name
    job = summary(job_dir)
    assert job["stopped_by"] == "SIGUSR1" and job["stop_signal_ranks"] == [0] and job["epochs_completed"] == 1
    assert load(job_dir / "last.pth")["epoch"] == 1
    assert "later jobs are not started" in log and "resume=auto" in log


def test_the_next_run_in_the_process_trains_and_a_signal_on_another_rank_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag of a signal that stopped an earlier run of this process is cleared: this run trains its whole
    first epoch. A signal that reached only rank 1 (simulated: the all-reduce says stop, the gather names rank 1)
    still puts its name in rank 0's summary.json."""
    monkeypatch.setattr(signals, "_received", "SIGUSR1")  # left by the job before
    monkeypatch.setattr(signals, "stop_signal_anywhere", lambda device, world_size: True)
    monkeypatch.setattr(signals, "stop_signals", lambda world_size: {1: "SIGTERM"})
    with pytest.raises(signals.StopSignalExit) as info:
        run(tmp_path, "epochs=2")
    assert info.value.code == 0 and "SIGTERM received (rank(s) 1)" in info.value.message
    assert load(tmp_path / "last.pth")["global_step"] == 6  # the whole epoch, not one step
    assert summary(tmp_path)["stopped_by"] == "SIGTERM" and summary(tmp_path)["stop_signal_ranks"] == [1]


# --- eval_only and fine-tuning ----------------------------------------------------------------------------------
def test_eval_only_builds_the_model_of_the_checkpoints_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path / "train", "epochs=1", "model.mixer=sepconv")
    trained = json.loads((tmp_path / "train" / "summary.json").read_text())
    top1 = run(tmp_path / "eval", "eval_only=true", f"checkpoint={tmp_path / 'train' / 'last.pth'}")
    assert top1 == pytest.approx(trained["final_top1"])
    # a model set on the command line wins (here: the pooling default, which does not fit the sepconv weights)
    # a checkpoint in torch's legacy (non-zip) format, which cannot be memory-mapped, is read all the same
    legacy = tmp_path / "legacy.pth"
    torch.save(load(tmp_path / "train" / "last.pth"), legacy, _use_new_zipfile_serialization=False)
    assert run(tmp_path / "eval_legacy", "eval_only=true", f"checkpoint={legacy}") == pytest.approx(top1)
    with pytest.raises(ValueError, match="unexpected keys"):
        run(
            tmp_path / "eval2", "eval_only=true", f"checkpoint={tmp_path / 'train' / 'last.pth'}", "model.mixer=pooling"
        )


@pytest.mark.parametrize(
    ("name", "overrides", "classifier"),
    [
        ("metaformer_s12", {"mixer": "attention"}, {"head.fc.weight", "head.fc.bias"}),  # a builder config
        ("caformer_s18", {}, {"head.fc.fc2.weight", "head.fc.fc2.bias"}),  # MLP head: only its last layer
        ("poolformer_s12", {}, {"head.fc.weight", "head.fc.bias"}),  # a timm name
    ],
)
def test_fine_tuning_onto_another_class_count_keeps_a_new_classifier(
    name: str, overrides: dict[str, Any], classifier: set[str]
) -> None:
    source = mixerzoo.create_model(name, num_classes=1000, **overrides).state_dict()
    target = mixerzoo.create_model(name, num_classes=7, **overrides)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        load_checkpoint(target, source)
    load_checkpoint(target, source, reset_classifier=True)
    assert {k for k, v in source.items() if v.shape != fresh[k].shape} == classifier
    for key, value in target.state_dict().items():
        torch.testing.assert_close(value, fresh[key] if key in classifier else source[key], rtol=0, atol=0, msg=key)
    headless = mixerzoo.create_model(name, num_classes=0, **overrides).state_dict()  # a feature extractor's
    load_checkpoint(target, headless, reset_classifier=True)
    torch.testing.assert_close(target.state_dict()["head.norm.weight"], headless["head.norm.weight"])
    with pytest.raises(ValueError, match="missing keys: stages"):  # anything else must still fit
        load_checkpoint(target, {k: v for k, v in headless.items() if not k.startswith("stages.0.")}, True)


def test_fine_tuning_a_run_onto_another_dataset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(tmp_path / "digits", "epochs=1")
    caplog.clear()
    run(
        tmp_path / "tuned",
        "epochs=1",
        "data=fake",
        "data.num_classes=3",
        "data.img_size=32",
        "data.in_chans=1",
        f"checkpoint={tmp_path / 'digits' / 'best.pth'}",
    )
    assert "classifier does not fit" in caplog.text and "head.fc.weight (3, 128)" in caplog.text
    assert load(tmp_path / "tuned" / "last.pth")["model"]["head.fc.weight"].shape == (3, 128)


# --- exact mid-epoch resume in every loader configuration -------------------------------------------------------
AUGMENTED = ["aug.re_prob=0.5", "aug.mixup=0.8", "aug.cutmix=1.0", "ema.enabled=true", "+model.drop_path_rate=0.1"]
LOADER_CONFIGS = {
    "digits default (no workers)": ["data.num_workers=0"],
    "1 worker": ["data.num_workers=1"],
    "erasing, mixup/cutmix, EMA, drop path, no workers": ["data.num_workers=0", *AUGMENTED],
    "erasing, mixup/cutmix, EMA, drop path, 1 worker": ["data.num_workers=1", *AUGMENTED],
}


def run_augmented(output_dir: Path, *overrides: str) -> float:
    """A tiny run with the digits' random augmentation on (``TINY`` turns it off)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"output_dir={output_dir}",
                "batch_size=32",
                *[o for o in TINY if o != "aug.no_aug=true"],
                *overrides,
            ],
        )
    with mock.patch.object(train, "command_overrides", lambda: list(overrides)):
        return train.run(cfg)


@pytest.mark.parametrize("overrides", LOADER_CONFIGS.values(), ids=LOADER_CONFIGS.keys())
def test_a_mid_epoch_resume_is_exact_in_every_loader_configuration(tmp_path: Path, overrides: list[str]) -> None:
    """Resumed from a step checkpoint in the middle of epoch 1 (step 4 of 6): the final weights, EMA and losses are
    the uninterrupted run's, bit for bit. Before, the prefetcher had drawn batch 5's augmentation and erasing from the
    RNG state that step 4's checkpoint then saved (final weights differed by 4e-4 on the default digits job)."""
    common = ["epochs=2", "checkpoint_every_steps=4", "checkpoint_keep=100", *overrides]
    run_augmented(tmp_path / "straight", *common)
    run_augmented(tmp_path / "resumed", *common, f"resume={tmp_path / 'straight' / 'step_00000004.pth'}")
    straight, resumed = load(tmp_path / "straight" / "last.pth"), load(tmp_path / "resumed" / "last.pth")
    assert resumed["global_step"] == straight["global_step"] == 12
    assert_same_weights(resumed["model"], straight["model"], atol=0)
    if straight["ema"] is not None:
        assert_same_weights(resumed["ema"], straight["ema"], atol=0)
    assert metric_column(tmp_path / "resumed", "train_loss") == metric_column(tmp_path / "straight", "train_loss")


# --- a refused re-run, a file that is not a training checkpoint ----------------------------------------------------
def test_a_refused_rerun_leaves_the_finished_runs_config_record_alone(tmp_path: Path) -> None:
    """Hydra records the job's config in ``.hydra/`` before train.py starts; a re-run that is refused (no resume, the
    directory holds a run) used to overwrite it, and collect_results.py then reported the run as the refused one's."""
    run_dir = tmp_path / "finished"
    (run_dir / ".hydra").mkdir(parents=True)
    record = {"config.yaml": "model:\n  mixer: pooling\n", "overrides.yaml": "- model.mixer=pooling\n"}
    for name, text in record.items():
        (run_dir / ".hydra" / name).write_text(text)
    (run_dir / "last.pth").write_bytes(b"a finished run's checkpoint")
    args = [sys.executable, "train.py", "model.mixer=sepconv", "epochs=1", *TINY, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "already holds a run" in done.stdout + done.stderr
    assert {name: (run_dir / ".hydra" / name).read_text() for name in record} == record
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == sorted(record)  # no hydra.yaml either


def test_resuming_from_a_file_of_weights_names_it_and_the_option_that_takes_it(tmp_path: Path) -> None:
    """Before: a bare ``KeyError: 'model'`` (or 'optimizer')."""
    weights = tmp_path / "weights.pth"
    torch.save(mixerzoo.create_model("poolformerv2_s12").state_dict(), weights)
    with pytest.raises(
        CheckpointError, match=r"is not a train\.py checkpoint: it has no model, optimizer.*checkpoint=<path>"
    ):
        run(tmp_path / "run", "epochs=1", f"resume={weights}")


# --- one rule for eval_only, fine-tuning and resume: the stored config fills in -----------------------------------
FAKE_3_CLASSES = ["data=fake", "data.num_classes=3", "data.img_size=32", "data.in_chans=1", "data.fake_train_size=96"]


def test_eval_only_takes_the_model_and_the_data_of_the_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 3-class model trained on other data, evaluated without repeating the data: before, it was evaluated on the
    command's digits (10 classes) and failed on the head's shape."""
    run(tmp_path / "train", "epochs=1", "model.mixer=sepconv", *FAKE_3_CLASSES)
    trained = summary(tmp_path / "train")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        top1 = run(tmp_path / "eval", "eval_only=true", f"checkpoint={tmp_path / 'train' / 'last.pth'}")
    assert top1 == pytest.approx(trained["final_top1"])
    assert (
        "model from the config stored in the checkpoint; data from the config stored in the checkpoint" in caplog.text
    )
    # a key set on the command line wins over the stored one, and the log names it
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(
            tmp_path / "eval2",
            "eval_only=true",
            f"checkpoint={tmp_path / 'train' / 'last.pth'}",
            "data.fake_val_size=64",
        )
    assert "data from the config stored in the checkpoint except data.fake_val_size" in caplog.text


def test_fine_tuning_takes_the_checkpoints_model_unless_the_command_sets_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sepconv run fine-tuned onto other data without repeating ``model.mixer=sepconv``: before, the command's
    pooling model was built and loading failed with 30 unexpected keys and no hint."""
    run(tmp_path / "sepconv", "epochs=1", "model.mixer=sepconv")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run(tmp_path / "tuned", "epochs=1", *FAKE_3_CLASSES, f"checkpoint={tmp_path / 'sepconv' / 'best.pth'}")
    assert "model from the config stored in the checkpoint; data from this command's config" in caplog.text
    tuned = load(tmp_path / "tuned" / "last.pth")
    assert tuned["config"]["model"]["mixer"] == "sepconv" and tuned["model"]["head.fc.weight"].shape == (3, 128)
    with pytest.raises(ValueError, match="unexpected keys"):  # a model the command sets is the command's
        run(tmp_path / "pooling", "epochs=1", "model.mixer=pooling", f"checkpoint={tmp_path / 'sepconv' / 'best.pth'}")
