"""What a training job holds: ``EvalState`` (the model and its validation loader, all ``eval_only`` needs) and
``TrainState`` (everything the loop reads and updates), and ``build_train_state``, which makes the second from the
first with timm's optimizer, scheduler, EMA, Mixup/CutMix and losses."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from omegaconf import DictConfig
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from mixerzoo.training.data import EpochBatchSampler, log_unused_samples, train_loader
from mixerzoo.training.signals import STOP_SIGNALS

__all__ = ["EvalState", "TrainState", "build_train_state"]

_logger = logging.getLogger("train")


@dataclass
class EvalState:
    """The model and what evaluating it needs: all that ``eval_only`` builds."""

    net: nn.Module  # the bare model: the weights checkpoints hold, the EMA's source
    eval_loader: Any
    device: torch.device
    rank: int
    world_size: int
    output_dir: str
    num_params: int

    @property
    def primary(self) -> bool:
        return self.rank == 0


@dataclass
class TrainState(EvalState):
    """Everything the loop reads and updates. ``epoch`` is the epoch in progress (0-based) and
    ``samples_in_epoch`` the samples of its global order that all ranks together have trained on: a position that
    means the same with any number of processes or batch size (restored from a checkpoint)."""

    model: nn.Module  # what trains: ``net``, wrapped in DDP (several processes), then compiled (runtime.compile)
    eval_model: nn.Module  # ``net``, compiled (runtime.compile), not DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    ema_evaluated: bool  # False for an EMA kept on the CPU (ema.force_cpu) beside a GPU model: saved, not evaluated
    mixup: Mixup | None
    criterion: nn.Module
    train_loader: Any
    updates_per_epoch: int  # optimizer steps of a whole epoch
    num_epochs: int  # cfg.epochs plus the schedule's cooldown
    global_batch: int  # samples per optimizer step: batch_size x processes x grad_accum_steps
    epoch: int = 0
    samples_in_epoch: int = 0
    global_step: int = 0  # optimizer steps taken since the run began (across resumes)
    epoch_loss_sum: float = 0.0  # the epoch's summed step losses, kept across a mid-epoch resume
    epoch_updates: int = 0
    stop_requested: bool = False  # a stop signal reached some rank: all ranks stop after the same step
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per finished epoch
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})

    @property
    def samples_per_epoch(self) -> int:
        return self.updates_per_epoch * self.global_batch

    @property
    def schedule_position(self) -> float:
        """Where the run stands in optimizer steps of this configuration: the lr schedule's ``t``. Fractional
        when a resume with another global batch started between two of this run's steps."""
        done, rest = divmod(self.samples_in_epoch, self.global_batch)
        position = self.epoch * self.updates_per_epoch + done
        return position + rest / self.global_batch if rest else position


def build_train_state(cfg: DictConfig, evaluation: EvalState, train_ds: Dataset) -> TrainState:
    """Everything training adds to ``evaluation``: optimizer (its lr scaled to the global batch), batches, schedule,
    scaler, EMA, Mixup/CutMix and loss, and the model that trains (wrapped in DDP, then compiled)."""
    net, device, rank, world_size = evaluation.net, evaluation.device, evaluation.rank, evaluation.world_size
    accum = cfg.optim.grad_accum_steps
    global_batch = cfg.batch_size * world_size * accum
    lr = cfg.optim.lr * global_batch / cfg.optim.lr_base_size if cfg.optim.lr_base_size else cfg.optim.lr
    opt_kwargs = {k: cfg.optim[k] for k in ("betas", "eps") if cfg.optim[k] is not None}
    optimizer = create_optimizer_v2(
        net,
        opt=cfg.optim.opt,
        lr=lr,
        weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum,
        layer_decay=cfg.optim.layer_decay,
        **opt_kwargs,
    )
    num_batches = len(train_ds) // world_size // cfg.batch_size  # per rank; the last partial batch is dropped
    if cfg.limit_train_batches is not None:
        num_batches = min(num_batches, cfg.limit_train_batches)
    updates_per_epoch = num_batches // accum
    if updates_per_epoch == 0:
        raise ValueError(
            f"No full training step per epoch: {len(train_ds)} images over {world_size} process(es) with "
            f"batch_size={cfg.batch_size} x grad_accum_steps={accum}. Lower them."
        )
    log_unused_samples(len(train_ds), updates_per_epoch * global_batch, limited=cfg.limit_train_batches is not None)
    mixup = None
    if cfg.aug.mixup > 0 or cfg.aug.cutmix > 0 or cfg.aug.cutmix_minmax is not None:
        mixup = Mixup(
            mixup_alpha=cfg.aug.mixup,
            cutmix_alpha=cfg.aug.cutmix,
            cutmix_minmax=cfg.aug.cutmix_minmax,
            prob=cfg.aug.mixup_prob,
            switch_prob=cfg.aug.mixup_switch_prob,
            mode=cfg.aug.mixup_mode,
            label_smoothing=cfg.aug.smoothing,
            num_classes=cfg.data.num_classes,
        )
        criterion = SoftTargetCrossEntropy()
    elif cfg.aug.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=cfg.aug.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    # Mixup/CutMix and random erasing run in the loader, seeded by the batch's position (exact resume); its workers
    # ignore the stop signals, which the training process handles
    batch_sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, rank, world_size)
    loader = train_loader(train_ds, batch_sampler, cfg.data, cfg.aug, device, mixup=mixup, ignored=STOP_SIGNALS)
    scheduler, num_epochs = None, cfg.epochs
    if cfg.sched.sched != "none":
        scheduler, num_epochs = create_scheduler_v2(
            optimizer,
            sched=cfg.sched.sched,
            num_epochs=cfg.epochs,
            decay_epochs=cfg.sched.decay_epochs,
            decay_rate=cfg.sched.decay_rate,
            cooldown_epochs=cfg.sched.cooldown_epochs,
            min_lr=cfg.sched.min_lr,
            warmup_lr=cfg.sched.warmup_lr,
            warmup_epochs=cfg.sched.warmup_epochs,
            warmup_prefix=cfg.sched.warmup_prefix,
            step_on_epochs=not cfg.sched.on_updates,
            updates_per_epoch=updates_per_epoch,
        )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.runtime.precision == "fp16")
    ema = None
    if cfg.ema.enabled:
        ema = ModelEmaV3(
            net, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup, device="cpu" if cfg.ema.force_cpu else None
        )
    # an EMA kept on the CPU (ema.force_cpu) beside a GPU model is saved but not evaluated (as in timm's train.py)
    ema_evaluated = ema is not None and next(ema.module.parameters()).device == next(net.parameters()).device
    if ema is not None and not ema_evaluated:
        _logger.info("ema.force_cpu=true on a %s run: the EMA weights are saved, not evaluated.", device.type)
    # DDP wraps the bare network and the wrapper is compiled (PyTorch's order): DDP's hooks bucket the gradients and
    # all-reduce each bucket while the backward runs, and compile's DDP optimiser splits the graph at the buckets'
    # boundaries so that they can. Wrapping a compiled network makes its backward one graph whose gradients all
    # appear at its end: nothing left to overlap.
    model: nn.Module = net
    if world_size > 1:
        model = DistributedDataParallel(
            net,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.runtime.distributed.find_unused_parameters,
        )
    eval_model: nn.Module = net
    if cfg.runtime.compile:
        compile_model = partial(torch.compile, mode=cfg.runtime.compile_mode, backend=cfg.runtime.compile_backend)
        model = compile_model(model)
        eval_model = model if world_size == 1 else compile_model(net)
    _logger.info(
        f"training {num_epochs} epochs x {updates_per_epoch} steps, global batch {global_batch}, lr {lr:.3e}, "
        f"output {evaluation.output_dir}"
    )
    return TrainState(
        **vars(evaluation),
        model=model,
        eval_model=eval_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        ema=ema,
        ema_evaluated=ema_evaluated,
        mixup=mixup,
        criterion=criterion,
        train_loader=loader,
        updates_per_epoch=updates_per_epoch,
        num_epochs=num_epochs,
        global_batch=global_batch,
    )
