"""What a run writes besides checkpoints: the console line per epoch, ``metrics.csv`` / ``metrics.jsonl``
(rewritten atomically from the history), TensorBoard scalars, ``summary.json`` and ``eval.json``."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig

from mixerzoo.training.atomic import atomic_write

if TYPE_CHECKING:
    from mixerzoo.training.state import TrainState

__all__ = ["log_epoch", "open_tensorboard", "summarise", "summary_is_complete", "write_json", "write_metrics"]

_logger = logging.getLogger("train")


def open_tensorboard(cfg: DictConfig, output_dir: str) -> Any:
    if not cfg.logger.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _logger.warning("logger.tensorboard=true but the tensorboard package is not installed: skipping it.")
        return None
    return SummaryWriter(os.path.join(output_dir, "tensorboard"))


def log_epoch(cfg: DictConfig, metrics: dict[str, float], writer: Any, state: TrainState) -> None:
    """Console line, metrics.csv / metrics.jsonl (rewritten from the history), TensorBoard scalars."""
    best = state.best
    _logger.info(
        f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f} | val loss {metrics['val_loss']:.4f} "
        f"top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}"
        + (f" | ema top1 {metrics['ema_top1']:.2f}" if "ema_top1" in metrics else "")
        + f" | {metrics['images_per_sec']:.0f} img/s | best {best['top1']:.2f} (epoch {best['epoch']})"
    )
    write_metrics(cfg, state.output_dir, state.history)
    if writer is not None:
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, metrics["epoch"])


def write_metrics(cfg: DictConfig, output_dir: str, history: list[dict[str, Any]], repair: bool = False) -> None:
    """``metrics.csv`` / ``metrics.jsonl``: one row per epoch of ``history``, each file rewritten atomically (a
    few hundred rows at most), so they always match the checkpoint they follow. ``repair``: only where a file
    differs (a crash after a checkpoint and before its row), saying so."""
    rendered = {}
    if cfg.logger.csv:
        lines = io.StringIO()
        fields = list(dict.fromkeys(key for row in history for key in row))
        csv_writer = csv.DictWriter(lines, fieldnames=fields)
        if history:
            csv_writer.writeheader()
            csv_writer.writerows(history)
        rendered["metrics.csv"] = lines.getvalue()
    if cfg.logger.json:
        rendered["metrics.jsonl"] = "".join(json.dumps(row) + "\n" for row in history)
    for name, text in rendered.items():
        path = os.path.join(output_dir, name)
        if repair:
            if not os.path.isfile(path):
                if history:
                    _logger.info(f"{name}: the checkpoint's {len(history)} epoch(s) written to the new run directory.")
            else:
                with open(path, newline="") as f:
                    if f.read() == text:
                        continue
                _logger.warning(f"{name} did not match the checkpoint's {len(history)} epoch(s): rewritten from it.")
        with atomic_write(path, "w", newline="") as f:
            f.write(text)


def write_json(path: str, result: dict[str, Any], label: str) -> None:
    """``result`` to ``path`` (indented, atomically: a crash never leaves half a ``summary.json``) and as one log
    line."""
    with atomic_write(path, "w") as f:
        json.dump(result, f, indent=2)
    _logger.info(f"{label}: {json.dumps(result)}")


def summarise(cfg: DictConfig, state: TrainState, signals: dict[int, str] | None = None) -> float:
    """Write ``summary.json`` from the run's metrics history (with, under DDP, whether the ranks' weights ended
    equal); returns the best top-1. Training throughput covers every epoch of the run, resumes included.
    ``stopped_by`` names the stop signal (of the first rank in ``signals`` that received one) when it left the run
    unfinished, and ``stop_signal_ranks`` the ranks it reached."""
    ranks_in_sync = None
    if state.world_size > 1:  # DDP keeps replicas equal; prove it with a per-parameter fingerprint from every rank
        fingerprint = torch.stack([p.detach().double().sum() for p in state.net.parameters()])
        gathered = [torch.zeros_like(fingerprint) for _ in range(state.world_size)]
        dist.all_gather(gathered, fingerprint)
        ranks_in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
        if not ranks_in_sync:
            _logger.warning("model weights differ between ranks at the end of training")
    last = state.history[-1] if state.history else {}
    train_time = sum(row["train_time"] for row in state.history)
    train_images = sum(row["images_per_sec"] * row["train_time"] for row in state.history)
    summary = {
        "best_top1": state.best["top1"],
        "best_epoch": state.best["epoch"],
        "final_top1": last.get("ema_top1", last.get("top1")),
        "final_top5": last.get("ema_top5", last.get("top5")),
        "final_top1_model": last.get("top1"),
        "epochs_completed": state.epoch,
        "epochs_total": state.num_epochs,
        "stopped_by": next(iter(signals.values())) if signals and state.epoch < state.num_epochs else None,
        "stop_signal_ranks": sorted(signals or {}),
        "train_images_per_sec": train_images / train_time if train_time else None,
        "params": state.num_params,
        "num_classes": cfg.data.num_classes,  # as settled from the data (null in the saved config of data=folder)
        "global_batch": state.global_batch,
        "world_size": state.world_size,
        "ranks_in_sync": ranks_in_sync,
        "device": state.device.type,
        "precision": cfg.runtime.precision,
    }
    if state.primary:
        write_json(os.path.join(state.output_dir, "summary.json"), summary, "summary")
    return state.best["top1"]


def summary_is_complete(path: str) -> bool:
    """Whether ``path`` holds a whole ``summary.json`` (what marks a run finished); one that cannot be read (left by
    a crash before summary.json was written atomically) is rewritten, not trusted."""
    try:
        with open(path) as f:
            return isinstance(json.load(f), dict)
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as err:
        _logger.warning(f"{path} is unreadable ({type(err).__name__}: {err}): it is written again.")
        return False
