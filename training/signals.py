"""Stop signals: SIGTERM (preemption) and SIGUSR1 (Slurm's ``--signal=USR1@<seconds>``) ask a run to stop after
the current optimizer step, write its checkpoint and summary, and exit.

The handler only records the signal (``received()``); the loop reads it once per update, in the same all-reduce
as the loss, so every rank stops after the same step. ``catch_stop_signals()`` installs the handler for the length
of a ``fit`` and restores the previous handlers after it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "STOP_SIGNALS",
    "StopSignalExit",
    "catch_stop_signals",
    "clear",
    "on_stop_signal",
    "received",
    "stop_signal_anywhere",
    "stop_signals",
]

_logger = logging.getLogger("train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # preemption (SIGTERM) and Slurm's --signal=USR1@<seconds>
_received: str | None = None  # set by the handler, read after every optimizer step; cleared by catch_stop_signals


class StopSignalExit(SystemExit):
    """Raised by ``run`` when a SIGTERM/SIGUSR1 reached any rank, after ``last.pth`` and ``summary.json`` are
    written: the process ends (exit status 0) instead of returning, so Hydra's basic launcher, which runs a
    multirun's jobs one after another in this process, does not start the next job. ``resume=auto`` continues."""

    def __init__(self, message: str) -> None:
        super().__init__(0)
        self.message = message


def on_stop_signal(signum: int, _frame: Any) -> None:
    """The handler: records the signal's name and says what happens next."""
    global _received
    _received = signal.Signals(signum).name
    _logger.warning(f"{_received} received: finishing this step, writing a checkpoint, then exiting.")


def received() -> str | None:
    """The name of the stop signal this process received during the current ``fit``, or None."""
    return _received


def clear() -> None:
    """Forget a received signal (one that stopped an earlier job of this process, a multirun's)."""
    global _received
    _received = None


@contextlib.contextmanager
def catch_stop_signals() -> Iterator[None]:
    """Record SIGTERM/SIGUSR1 instead of dying, for the length of the block; the previous handlers after it."""
    clear()
    previous = {s: signal.signal(s, on_stop_signal) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_signal_anywhere(device: torch.device, world_size: int) -> bool:
    """Whether a stop signal reached any rank (a collective: every rank calls it, once per epoch)."""
    flag = torch.tensor(float(_received is not None), device=device)
    if world_size > 1:
        dist.all_reduce(flag)
    return bool(flag.item())


def stop_signals(world_size: int) -> dict[int, str]:
    """rank -> the stop signal it received during ``fit`` (a collective under DDP: every rank calls it)."""
    names: list[Any] = [_received]
    if world_size > 1:
        names = [None] * world_size
        dist.all_gather_object(names, _received)
    return {rank: name for rank, name in enumerate(names) if name}
