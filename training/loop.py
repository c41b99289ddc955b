"""The training loop: one epoch of updates (``train_one_epoch``), evaluation, and ``fit``, which runs epochs to
the end of the schedule, evaluating, checkpointing and logging after each, and stops cleanly on a stop signal."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig
from timm.utils import accuracy, dispatch_clip_grad

from mixerzoo.training import signals
from mixerzoo.training.checkpoints import STEP_PREFIX, save_checkpoint
from mixerzoo.training.outputs import log_epoch, open_tensorboard
from mixerzoo.training.runtime import autocast
from mixerzoo.training.state import EvalState, TrainState

__all__ = ["Progress", "evaluate", "evaluation_totals", "fit", "train_one_epoch"]

_logger = logging.getLogger("train")


class Progress:
    """A tqdm bar on a terminal, otherwise a log line every ``log_interval`` steps (rank 0 only)."""

    def __init__(self, cfg: DictConfig, total: int, start: int, epoch: int, num_epochs: int, enabled: bool):
        self.bar = None
        self.interval, self.total, self.epoch, self.num_epochs = cfg.logger.log_interval, total, epoch, num_epochs
        self.enabled = enabled
        self.start_time, self.start = time.time(), start
        show_bar = cfg.logger.progress_bar if cfg.logger.progress_bar is not None else sys.stderr.isatty()
        if enabled and show_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"epoch {epoch + 1}/{num_epochs}", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, images_per_sec: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_sec:.0f}", refresh=False)
        elif step % self.interval == 0 or step == self.total:
            done = step - self.start
            eta = (time.time() - self.start_time) / max(done, 1) * (self.total - step)
            _logger.info(
                f"epoch {self.epoch + 1}/{self.num_epochs} step {step}/{self.total} loss {loss:.4f} lr {lr:.3e} "
                f"{images_per_sec:.0f} img/s ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_one_epoch(cfg: DictConfig, state: TrainState) -> dict[str, float] | None:
    """Train the rest of ``state.epoch``, from sample ``state.samples_in_epoch`` of its global order on, advancing
    that and ``state.global_step`` at every update (and writing a step checkpoint every ``checkpoint_every_steps``);
    returns the epoch's mean loss (over all its steps, before a resume too) and this run's global images/s, or None
    when a stop signal ended it before its last step.

    One host sync per optimizer update and none between forward and backward: the update's summed loss and the
    stop flag travel together (summed over ranks in the same all-reduce, which never runs inside ``no_sync``
    micro-steps) and are read once, after the backward and before the optimizer step. So a non-finite loss raises
    ``FloatingPointError`` on every rank before anything of the update reaches the weights, and a stop signal on
    any rank stops all of them after the same optimizer step.
    """
    model, optimizer, scaler, mixup_fn = state.model, state.optimizer, state.scaler, state.mixup
    device, world_size, accum = state.device, state.world_size, cfg.optim.grad_accum_steps
    epoch, loader, every = state.epoch, state.train_loader, cfg.checkpoint_every_steps
    if mixup_fn is not None and cfg.aug.mixup_off_epoch and epoch >= cfg.aug.mixup_off_epoch:
        mixup_fn.mixup_enabled = False
    steps_left = max(state.samples_per_epoch - state.samples_in_epoch, 0) // state.global_batch
    loader.batch_sampler.set_epoch(epoch, state.samples_in_epoch, steps_left * accum)
    steps_done = state.updates_per_epoch - steps_left
    progress = Progress(cfg, state.updates_per_epoch, steps_done, epoch, state.num_epochs, state.primary)
    model.train()
    update_loss = torch.zeros((), device=device)  # summed over the micro-steps of the current update
    images, start_time, stop = 0, time.time(), False
    for i, (x, y) in enumerate(loader):  # x: normalised, erased and mixed on the device (training.data.TrainBatches)
        if cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        is_update = (i + 1) % accum == 0
        sync_ctx = model.no_sync() if world_size > 1 and not is_update else contextlib.nullcontext()
        with sync_ctx:
            with autocast(cfg, device):
                loss = state.criterion(model(x), y)
            scaler.scale(loss / accum).backward()
        update_loss += loss.detach().float()
        images += x.shape[0]
        if not is_update:
            continue
        flags = torch.stack([update_loss, torch.full((), float(signals.received() is not None), device=device)])
        if world_size > 1:
            dist.all_reduce(flags)
        step_loss, stop = flags.tolist()  # the update's one host sync
        update_loss.zero_()
        step_loss /= world_size * accum
        if not math.isfinite(step_loss):
            raise FloatingPointError(
                f"Loss is {step_loss} at epoch {epoch + 1}, step {steps_done + i // accum + 1} of "
                f"{state.updates_per_epoch}: stopping. Nothing of this step was applied; the last good checkpoint "
                f"is {os.path.join(state.output_dir, 'last.pth')} (if one was written). Try a lower optim.lr, "
                "optim.clip_grad=1.0, or runtime.precision=bf16/fp32."
            )
        state.epoch_loss_sum, state.epoch_updates = state.epoch_loss_sum + step_loss, state.epoch_updates + 1
        if cfg.optim.clip_grad:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(state.net.parameters(), cfg.optim.clip_grad, mode=cfg.optim.clip_mode)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.samples_in_epoch += state.global_batch
        if state.ema is not None:
            state.ema.update(state.net, step=state.global_step)
        if state.scheduler is not None:
            state.scheduler.step_update(num_updates=state.schedule_position)
        elapsed = time.time() - start_time
        lr, images_per_sec = optimizer.param_groups[-1]["lr"], images * world_size / max(elapsed, 1e-9)
        progress.update(steps_done + (i + 1) // accum, step_loss, lr, images_per_sec)
        if every and state.global_step % every == 0:
            save_checkpoint(cfg, state, f"{STEP_PREFIX}{state.global_step:08d}.pth")
        if stop:
            state.stop_requested = True
            break
    progress.close()
    if stop and state.samples_in_epoch + state.global_batch <= state.samples_per_epoch:
        return None  # stopped before the epoch's last step (after it: the epoch is evaluated and saved as usual)
    elapsed = time.time() - start_time
    return {
        "train_loss": state.epoch_loss_sum / max(state.epoch_updates, 1),
        "images_per_sec": images * world_size / max(elapsed, 1e-9),
        "train_time": elapsed,
    }


@torch.no_grad()
def evaluation_totals(cfg: DictConfig, model: nn.Module, loader: Any, device: torch.device) -> torch.Tensor:
    """Loss sum, top-1 hits, top-5 hits and sample count over ``loader``, as one float64 tensor on ``device``
    (accumulated there: no host sync per batch)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(loader):  # x: normalised float32 on the device
        if cfg.limit_val_batches is not None and i >= cfg.limit_val_batches:
            break
        if cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(cfg, device):
            output = model(x)
        output = output.float()
        top1, top5 = accuracy(output, y, topk=(1, min(5, output.shape[1])))  # % of the batch, on the device
        n = y.shape[0]
        loss = nn.functional.cross_entropy(output, y, reduction="sum")
        totals[:3] += torch.stack([loss.double(), top1.double() * n / 100, top5.double() * n / 100])
        totals[3] += n
    return totals


def evaluate(cfg: DictConfig, model: nn.Module, state: EvalState) -> dict[str, float]:
    """Top-1/top-5 and loss over the whole validation set; each rank takes a disjoint share, then sums."""
    totals = evaluation_totals(cfg, model, state.eval_loader, state.device)
    if state.world_size > 1:
        dist.all_reduce(totals)
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1)
    return {"val_loss": loss_sum / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


def fit(cfg: DictConfig, state: TrainState) -> None:
    """Train from where ``state`` stands to ``state.num_epochs``, evaluating (model and EMA), checkpointing and
    logging after every epoch; a SIGTERM/SIGUSR1 checkpoints and stops.

    After an epoch the writes go in this order: ``best.pth`` (if it is the best), ``last.pth``, the metrics files.
    A crash between any two leaves a consistent set: ``last.pth`` never names a best epoch that ``best.pth`` does
    not hold, and a resume from it rewrites metrics rows that were not written (the checkpoint carries them)."""
    writer = open_tensorboard(cfg, state.output_dir) if state.primary else None
    with contextlib.ExitStack() as cleanup:
        if writer is not None:
            cleanup.callback(writer.close)
        cleanup.enter_context(signals.catch_stop_signals())
        while state.epoch < state.num_epochs:
            train_metrics = train_one_epoch(cfg, state)
            if train_metrics is None:
                save_checkpoint(cfg, state, "last.pth")
                _logger.warning(
                    f"stopped by {signals.received() or 'a stop signal on another process'} at epoch "
                    f"{state.epoch + 1}, {state.samples_in_epoch} samples into it (step {state.global_step}): "
                    "checkpoint written."
                )
                break
            state.epoch, state.samples_in_epoch, state.epoch_loss_sum, state.epoch_updates = state.epoch + 1, 0, 0.0, 0
            if state.scheduler is not None:
                state.scheduler.step(state.epoch)
            metrics = {"epoch": state.epoch, **train_metrics, "lr": state.optimizer.param_groups[-1]["lr"]}
            metrics.update(evaluate(cfg, state.eval_model, state))
            score = metrics["top1"]
            if state.ema_evaluated:
                ema_metrics = evaluate(cfg, state.ema.module, state)
                metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
                score = ema_metrics["top1"]
            is_best = score > state.best["top1"]
            if is_best:
                state.best = {"top1": score, "epoch": state.epoch}
            state.history.append(metrics)
            save_checkpoint(cfg, state, *(["best.pth"] if is_best else []), "last.pth")
            if state.primary:
                log_epoch(cfg, metrics, writer, state)
            if state.stop_requested or signals.stop_signal_anywhere(state.device, state.world_size):
                state.stop_requested = True
                _logger.warning(f"stopped by a stop signal after epoch {state.epoch}: checkpoint written.")
                break
