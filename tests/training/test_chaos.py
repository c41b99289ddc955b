"""A small instance of ``tools/chaos.py``: a ``torchrun`` job with two ranks and a loader worker each is killed and
stopped while it trains, resumed each time, and ends with the weights of the uninterrupted run, bit for bit.

Before, a SIGTERM to the agent killed the loader workers (``DataLoader worker ... is killed by signal: Terminated``):
no stop checkpoint, no ``summary.json``. A SIGUSR1 sent to every process of the job, as Slurm's ``--signal=USR1``
sends it, is the other stop the job must survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixerzoo.tools import chaos

SMALL = ["--processes", "2", "--workers", "1", "--epochs", "2", "--steps-per-epoch", "12", "--checkpoint-every", "2"]
SMALL += ["--jitter", "0.3"]  # each attempt trains 3 steps and a little more: both faults fit in 24 steps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("faults", "stop"),
    [
        (["--kills", "1", "--sigterm", "1"], ["--stop-signal", "SIGTERM", "--stop-target", "agent"]),
        (["--kills", "0", "--sigterm", "1"], ["--stop-signal", "SIGUSR1", "--stop-target", "all"]),
    ],
    ids=["SIGKILL + SIGTERM to the agent", "SIGUSR1 to every process"],
)
def test_a_killed_and_stopped_torchrun_job_ends_with_the_uninterrupted_weights(
    tmp_path: Path, faults: list[str], stop: list[str]
) -> None:
    status = chaos.main([*SMALL, *faults, *stop, "--seed", "1", "--out", str(tmp_path / "chaos")])
    report = json.loads((tmp_path / "chaos" / "chaos.json").read_text())
    assert status == 0, report
    kinds = [fault["kind"] for fault in report["faults"]]
    assert sorted(kinds) == sorted(["SIGKILL"] * int(faults[1]) + [stop[1]])
    assert report["bitwise_equal"] == {"model": True} and report["max_abs_diff"] == {"model": 0.0}
    assert report["stopped_by"] == stop[1]
    stops = [
        lost for fault, lost in zip(report["faults"], report["steps_lost"], strict=True) if fault["kind"] != "SIGKILL"
    ]
    assert stops == [0]  # a stop signal loses nothing: the checkpoint is written at the step where it stopped
