"""Train or evaluate any zoo (or timm) model on images, driven by the Hydra configs in ``configs/``.

    python train.py                                            # tiny MetaFormer on the embedded digits set
    python train.py model=metaformer_tiny model.mixer=sepconv epochs=10
    python train.py experiment=poolformer_s12 data.root=/imagenet
    torchrun --standalone --nproc_per_node=8 train.py experiment=caformer_s18 data.root=/imagenet
    python train.py epochs=2 resume=auto hydra.run.dir=outputs/my_run   # continue a run where it stopped
    python train.py eval_only=true checkpoint=outputs/my_run/best.pth
    python train.py -m model.mixer=pooling,identity,sepconv seed=0,1   # a sweep, one directory per job

One loop for every setting: one process on CPU or GPU, or one process per GPU under ``torchrun`` (DDP, NCCL on
GPU, gloo on CPU; works across nodes unchanged). Everything else is timm or torch: ``create_transform``,
``Mixup``, ``create_optimizer_v2``, ``create_scheduler_v2``, ``ModelEmaV3``, autocast/GradScaler, DDP.

Outputs in the run directory: ``last.pth`` (every epoch, and on SIGTERM/SIGUSR1 mid-epoch) and ``best.pth``,
both written atomically; ``metrics.csv`` / ``metrics.jsonl`` (one row per epoch); ``summary.json``;
``train.log``; ``.hydra/`` (the composed config); ``tensorboard/`` with ``logger=tensorboard``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import hydra
import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad
from timm.utils.distributed import init_distributed_device_so
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

import mixerzoo  # registers the zoo's models in timm (also used: mixerzoo.load_checkpoint)
from mixerzoo.training.config import register_configs, validate_config
from mixerzoo.training.data import EpochBatchSampler, create_datasets, eval_loader, train_batches, train_loader

_logger = logging.getLogger("train")
register_configs()

CHECKPOINT_VERSION = 1
_stop_signal: str | None = None  # set by the SIGTERM/SIGUSR1 handler, read after every optimizer step


# --- setup ---------------------------------------------------------------------------------------------------
def setup_runtime(cfg: DictConfig) -> dict[str, Any]:
    """Device, process group (under torchrun or Slurm), threads, determinism and seeds."""
    device = cfg.runtime.device
    if device == "auto":  # the default, also of runtime=gpu (every experiment): CUDA if there is a GPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and (cfg.runtime.precision != "fp32" or cfg.runtime.channels_last):
            _logger.warning(
                f"runtime.device=auto: no CUDA device, running on the CPU with precision={cfg.runtime.precision}"
                f"{', channels_last' if cfg.runtime.channels_last else ''} (set for GPUs; slow here). For a quick "
                "check add debug=smoke; for CPU training runtime=cpu (fp32)."
            )
    info = init_distributed_device_so(device, dist_backend=cfg.runtime.distributed.backend)
    info["device"] = torch.device(info["device"])
    info["primary"] = info["global_rank"] == 0
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif info["device"].type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = cfg.seed + info["global_rank"]  # different augmentation per rank; DDP broadcasts rank 0's weights
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return info


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate ``cfg.model`` with the data's class count and channels, and for zoo models (builder configs and
    the zoo's timm names) its image size; a clear error for unknown names."""
    name = cfg.model.get("model_name") if cfg.model.get("_target_") == "timm.create_model" else None
    if name is not None and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:8]}*")[:10]
        raise ValueError(
            f"Unknown model {name!r}: not registered in timm (the zoo's models are registered by `import mixerzoo`)."
            + (f" Similar names: {', '.join(close)}." if close else "")
            + " Zoo configs: configs/model/*.yaml (model=<file name>); any timm model: model=timm model.model_name=..."
        )
    if cfg.data.num_classes is None:
        raise ValueError(
            "data.num_classes is null: it is taken from the data when the datasets are built (train.setup, "
            "training.data.create_datasets); set data.num_classes=<count> to build the model on its own."
        )
    data = dict(num_classes=cfg.data.num_classes, in_chans=cfg.data.in_chans)
    if name is None or timm.models.model_entrypoint(name).__module__.startswith("mixerzoo."):
        data["img_size"] = cfg.data.img_size  # zoo models: grid-bound mixers are built for the data's size
    return hydra.utils.instantiate(cfg.model, **data)


def autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.runtime.precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.runtime.precision]
    return torch.autocast(device.type, dtype=dtype)


def _on_stop_signal(signum: int, _frame: Any) -> None:
    global _stop_signal
    _stop_signal = signal.Signals(signum).name
    _logger.warning(f"{_stop_signal} received: finishing this step, writing a checkpoint, then exiting.")


# --- state ---------------------------------------------------------------------------------------------------
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
    """Everything the loop reads and updates. ``epoch`` is the epoch in progress and ``batch_in_epoch`` the
    batches of it already trained on (both 0-based counts, restored from a checkpoint)."""

    model: nn.Module  # what trains: ``net``, compiled and/or wrapped in DDP
    eval_model: nn.Module  # ``net``, compiled, not DDP-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler | None
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    ema_evaluated: bool  # False for an EMA kept on the CPU (ema.force_cpu) beside a GPU model: saved, not evaluated
    mixup: Mixup | None
    criterion: nn.Module
    train_loader: Any
    num_batches: int  # per epoch and rank: a whole number of updates
    num_epochs: int  # cfg.epochs plus the schedule's cooldown
    global_batch: int
    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1})


# --- checkpoints ---------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Every RNG this process uses, as tensors and plain Python values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world_size: int) -> list[dict[str, Any]]:
    """The RNG states of all ranks (a collective: every rank must call it)."""
    if world_size == 1:
        return [rng_state()]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, rng_state())
    return states


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(output_dir, "last.pth")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint file (use resume=auto or a path).")
    return resume


def save(cfg: DictConfig, state: TrainState, is_best: bool = False) -> None:
    """All ranks gather RNG states; rank 0 writes ``last.pth`` (and ``best.pth``), each atomically. The checkpoint
    holds where to restart: the next epoch once all batches of ``state.epoch`` are trained on."""
    rng = all_rng_states(state.world_size)
    if not state.primary:
        return
    epoch, batch_in_epoch = state.epoch, state.batch_in_epoch
    if batch_in_epoch >= state.num_batches:
        epoch, batch_in_epoch = epoch + 1, 0
    ckpt = {
        "model": state.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.module.state_dict() if state.ema is not None else None,
        "epoch": epoch,  # the epoch to (re)start at
        "batch_in_epoch": batch_in_epoch,  # batches of that epoch already trained on (mid-epoch stop)
        "global_step": state.global_step,
        "best": state.best,
        "rng": rng,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "version": CHECKPOINT_VERSION,
    }
    save_atomic(ckpt, os.path.join(state.output_dir, "last.pth"))
    if is_best:
        save_atomic(ckpt, os.path.join(state.output_dir, "best.pth"))


def restore(cfg: DictConfig, state: TrainState) -> None:
    """Continue from ``cfg.resume`` exactly where it stopped: weights, optimizer, schedule, scaler, EMA, position,
    best score and every rank's RNGs. Nothing to do without a checkpoint."""
    path = resolve_resume(cfg.resume, state.output_dir)
    if path is None:
        if cfg.resume == "auto":
            _logger.info(f"resume=auto: no checkpoint in {state.output_dir}, starting from scratch")
        return
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state.net.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scheduler = state.scheduler
    same_schedule = ckpt["config"]["epochs"] == cfg.epochs and ckpt["config"]["sched"] == dict(cfg.sched)
    if scheduler is not None and ckpt["scheduler"] is not None and same_schedule:
        scheduler.load_state_dict(ckpt["scheduler"])  # (what a plateau schedule has learnt cannot be replayed)
    state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and ckpt["ema"] is not None:
        state.ema.module.load_state_dict(ckpt["ema"])
    state.epoch, state.batch_in_epoch, state.global_step = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["global_step"]
    state.best = ckpt["best"]
    if len(ckpt["rng"]) == state.world_size:
        set_rng_state(ckpt["rng"][state.rank])
    else:
        _logger.warning(f"checkpoint has RNG states for {len(ckpt['rng'])} ranks, not {state.world_size}: reseeded.")
    if not same_schedule:
        _logger.warning(
            f"epochs ({ckpt['config']['epochs']} -> {cfg.epochs}) or sched changed since the checkpoint: "
            "the lr schedule is rebuilt from this config, at the checkpoint's step."
        )
    if scheduler is not None:  # set the lr for where the run stands
        scheduler.step(state.epoch)
        scheduler.step_update(state.global_step)
    _logger.info(
        f"resumed from {path}: epoch {state.epoch + 1}, batch {state.batch_in_epoch}, step {state.global_step}"
    )


# --- one epoch -----------------------------------------------------------------------------------------------
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
    """Train ``state.epoch`` from batch ``state.batch_in_epoch`` on, advancing that and ``state.global_step`` at
    every update; returns the epoch's mean loss and global images/s, or None when a stop signal ended it early.

    One host sync per optimizer update and none between forward and backward: the update's summed loss and the
    stop flag travel together (summed over ranks in the same all-reduce, which never runs inside ``no_sync``
    micro-steps) and are read once, after the backward and before the optimizer step. So a non-finite loss raises
    ``FloatingPointError`` on every rank before anything of the update reaches the weights, and a stop signal on
    any rank stops all of them after the same optimizer step.
    """
    model, optimizer, scaler, mixup_fn = state.model, state.optimizer, state.scaler, state.mixup
    device, world_size, accum = state.device, state.world_size, cfg.optim.grad_accum_steps
    epoch, start_batch, loader = state.epoch, state.batch_in_epoch, state.train_loader
    if mixup_fn is not None and cfg.aug.mixup_off_epoch and epoch >= cfg.aug.mixup_off_epoch:
        mixup_fn.mixup_enabled = False
    loader.batch_sampler.set_epoch(epoch, start_batch)
    progress = Progress(cfg, state.num_batches, start_batch, epoch, state.num_epochs, state.primary)
    model.train()
    update_loss = torch.zeros((), device=device)  # summed over the micro-steps of the current update
    loss_sum, updates, images, start_time, stop = 0.0, 0, 0, time.time(), False
    for i, (x, y) in enumerate(loader, start=start_batch):  # x: normalised float32 on the device
        if cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            x, y = mixup_fn(x, y)
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
        flags = torch.stack([update_loss, torch.full((), float(_stop_signal is not None), device=device)])
        if world_size > 1:
            dist.all_reduce(flags)
        step_loss, stop = flags.tolist()  # the update's one host sync
        update_loss.zero_()
        step_loss /= world_size * accum
        if not math.isfinite(step_loss):
            where = f"batch {i + 1}" if accum == 1 else f"batches {i + 2 - accum}-{i + 1}"
            raise FloatingPointError(
                f"Loss is {step_loss} at epoch {epoch + 1}, {where}: stopping. Nothing of this step was applied; "
                f"the last good checkpoint is {os.path.join(state.output_dir, 'last.pth')} (if one was written). "
                "Try a lower optim.lr, optim.clip_grad=1.0, or runtime.precision=bf16/fp32."
            )
        loss_sum, updates = loss_sum + step_loss, updates + 1
        if cfg.optim.clip_grad:
            scaler.unscale_(optimizer)
            dispatch_clip_grad(state.net.parameters(), cfg.optim.clip_grad, mode=cfg.optim.clip_mode)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        state.batch_in_epoch = i + 1
        if state.ema is not None:
            state.ema.update(state.net, step=state.global_step)
        if state.scheduler is not None:
            state.scheduler.step_update(num_updates=state.global_step)
        elapsed = time.time() - start_time
        progress.update(i + 1, step_loss, optimizer.param_groups[-1]["lr"], images * world_size / max(elapsed, 1e-9))
        if stop:
            break
    progress.close()
    if stop:
        return None
    elapsed = time.time() - start_time
    return {
        "train_loss": loss_sum / max(updates, 1),
        "images_per_sec": images * world_size / max(elapsed, 1e-9),
        "train_time": elapsed,
        "train_images": images * world_size,
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


# --- the job -------------------------------------------------------------------------------------------------
def setup(cfg: DictConfig) -> tuple[EvalState, Dataset]:
    """Runtime, datasets, the model (with ``cfg.checkpoint``'s weights) and the validation loader; returns them
    with the training set. The config is validated first (unknown keys added with ``+``, values like ``epochs=0``)."""
    validate_config(cfg)
    info = setup_runtime(cfg)
    device, rank, world_size = info["device"], info["global_rank"], info["world_size"]
    if info["primary"]:
        os.makedirs(cfg.output_dir, exist_ok=True)
    else:
        logging.getLogger().setLevel(logging.WARNING)
    train_ds, val_ds = create_datasets(cfg.data, cfg.aug, seed=cfg.seed)
    net = build_model(cfg).to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.runtime.grad_checkpointing:
        net.set_grad_checkpointing(True)
    num_params = sum(p.numel() for p in net.parameters())
    _logger.info(
        f"model {cfg.model.get('model_name', cfg.model.get('_target_'))}: {num_params / 1e6:.3f}M params | "
        f"data {cfg.data.name}: {len(train_ds)} train / {len(val_ds)} val images, {cfg.data.num_classes} classes, "
        f"{cfg.data.img_size}px | {world_size} process(es) on {device.type}, {cfg.runtime.precision}, "
        f"{torch.get_num_threads()} thread(s) each"
    )
    if cfg.checkpoint:
        layout = mixerzoo.load_checkpoint(net, cfg.checkpoint)
        _logger.info(f"loaded weights from {cfg.checkpoint} ({layout} layout)")
    eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    loader = eval_loader(val_ds, eval_batch_size, cfg.data, device, rank=rank, world_size=world_size)
    return EvalState(net, loader, device, rank, world_size, cfg.output_dir, num_params), train_ds


def build(cfg: DictConfig, evaluation: EvalState, train_ds: Dataset) -> TrainState:
    """Everything training adds to ``evaluation``: optimizer (its lr scaled to the global batch), batches, schedule,
    scaler, EMA, Mixup/CutMix and loss, and the model that trains (compiled and/or wrapped in DDP)."""
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
    num_batches = len(train_batches(len(train_ds), cfg.batch_size, 0, cfg.seed, rank, world_size))
    if cfg.limit_train_batches is not None:
        num_batches = min(num_batches, cfg.limit_train_batches)
    num_batches -= num_batches % accum
    if num_batches == 0:
        raise ValueError(
            f"No full training step per epoch: {len(train_ds)} images over {world_size} process(es) with "
            f"batch_size={cfg.batch_size} x grad_accum_steps={accum}. Lower them."
        )
    batch_sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, num_batches, cfg.seed, rank, world_size)
    loader = train_loader(train_ds, batch_sampler, cfg.data, cfg.aug, device)
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
            updates_per_epoch=num_batches // accum,
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
    model: nn.Module = net
    if cfg.runtime.compile:
        model = torch.compile(net, mode=cfg.runtime.compile_mode, backend=cfg.runtime.compile_backend)
    eval_model = model
    if world_size > 1:
        model = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.runtime.distributed.find_unused_parameters,
        )
    _logger.info(
        f"training {num_epochs} epochs x {num_batches // accum} steps, global batch {global_batch}, lr {lr:.3e}, "
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
        num_batches=num_batches,
        num_epochs=num_epochs,
        global_batch=global_batch,
    )


def fit(cfg: DictConfig, state: TrainState) -> tuple[dict[str, float], float | None]:
    """Train from where ``state`` stands to ``state.num_epochs``, evaluating (model and EMA), checkpointing and
    logging after every epoch; a SIGTERM/SIGUSR1 checkpoints and stops. Returns the last epoch's metrics and the
    training throughput (global images/s) of this run."""
    previous_handlers = {s: signal.signal(s, _on_stop_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
    writer = open_tensorboard(cfg, state.output_dir) if state.primary else None
    last_metrics, train_images, train_time = {}, 0, 0.0
    try:
        while state.epoch < state.num_epochs:
            train_metrics = train_one_epoch(cfg, state)
            if train_metrics is None:
                save(cfg, state)
                _logger.warning(
                    f"stopped by {_stop_signal} at epoch {state.epoch + 1}, batch {state.batch_in_epoch}: "
                    "checkpoint written."
                )
                break
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
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
            save(cfg, state, is_best)
            train_images, train_time = train_images + metrics.pop("train_images"), train_time + metrics["train_time"]
            last_metrics = metrics
            if state.primary:
                log_epoch(cfg, metrics, writer, state.best)
            if _stop_signal is not None:
                _logger.warning(f"stopped by {_stop_signal} after epoch {state.epoch}: checkpoint written.")
                break
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()
    return last_metrics, train_images / train_time if train_time else None


def summarise(
    cfg: DictConfig, state: TrainState, last_metrics: dict[str, float], images_per_sec: float | None
) -> float:
    """Write ``summary.json`` (with, under DDP, whether the ranks' weights ended equal); returns the best top-1."""
    ranks_in_sync = None
    if state.world_size > 1:  # DDP keeps replicas equal; prove it with a per-parameter fingerprint from every rank
        fingerprint = torch.stack([p.detach().double().sum() for p in state.net.parameters()])
        gathered = [torch.zeros_like(fingerprint) for _ in range(state.world_size)]
        dist.all_gather(gathered, fingerprint)
        ranks_in_sync = all(torch.equal(g, gathered[0]) for g in gathered)
        if not ranks_in_sync:
            _logger.warning("model weights differ between ranks at the end of training")
    summary = {
        "best_top1": state.best["top1"],
        "best_epoch": state.best["epoch"],
        "final_top1": last_metrics.get("ema_top1", last_metrics.get("top1")),
        "final_top5": last_metrics.get("ema_top5", last_metrics.get("top5")),
        "final_top1_model": last_metrics.get("top1"),
        "epochs_completed": state.epoch,
        "epochs_total": state.num_epochs,
        "stopped_by": _stop_signal,
        "train_images_per_sec": images_per_sec,
        "params": state.num_params,
        "global_batch": state.global_batch,
        "world_size": state.world_size,
        "ranks_in_sync": ranks_in_sync,
        "device": state.device.type,
        "precision": cfg.runtime.precision,
    }
    if state.primary:
        write_json(os.path.join(state.output_dir, "summary.json"), summary, "summary")
    return state.best["top1"]


def run(cfg: DictConfig) -> float:
    """Train (or, with ``eval_only``, evaluate) as configured; returns the best validation top-1 (%)."""
    evaluation, train_ds = setup(cfg)
    if cfg.eval_only:
        return run_eval_only(cfg, evaluation)
    state = build(cfg, evaluation, train_ds)
    restore(cfg, state)
    last_metrics, images_per_sec = fit(cfg, state)
    return summarise(cfg, state, last_metrics, images_per_sec)


def run_eval_only(cfg: DictConfig, evaluation: EvalState) -> float:
    """Evaluate ``checkpoint`` (already loaded), or the checkpoint ``resume`` points at (model and EMA weights)."""
    net = evaluation.net
    results: dict[str, Any] = {"params": evaluation.num_params}
    resume_path = resolve_resume(cfg.resume, evaluation.output_dir)
    ema_weights = None
    if not cfg.checkpoint:
        if resume_path is None:
            raise ValueError("eval_only=true needs checkpoint=<path> (or resume=<path> / resume=auto with a last.pth).")
        ckpt = torch.load(resume_path, map_location="cpu", weights_only=True)
        mixerzoo.load_checkpoint(net, ckpt)
        ema_weights = ckpt.get("ema")
        results["checkpoint"] = resume_path
    else:
        results["checkpoint"] = cfg.checkpoint
    results.update(evaluate(cfg, net, evaluation))
    if ema_weights is not None:
        net.load_state_dict(ema_weights)
        results.update({f"ema_{k}": v for k, v in evaluate(cfg, net, evaluation).items()})
    if evaluation.primary:
        write_json(os.path.join(evaluation.output_dir, "eval.json"), results, "eval")
    return results["top1"]


# --- outputs -------------------------------------------------------------------------------------------------
def open_tensorboard(cfg: DictConfig, output_dir: str) -> Any:
    if not cfg.logger.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        _logger.warning("logger.tensorboard=true but the tensorboard package is not installed: skipping it.")
        return None
    return SummaryWriter(os.path.join(output_dir, "tensorboard"))


def log_epoch(cfg: DictConfig, metrics: dict[str, float], writer: Any, best: dict[str, Any]) -> None:
    """Console line, metrics.csv / metrics.jsonl rows, TensorBoard scalars."""
    _logger.info(
        f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f} | val loss {metrics['val_loss']:.4f} "
        f"top1 {metrics['top1']:.2f} top5 {metrics['top5']:.2f}"
        + (f" | ema top1 {metrics['ema_top1']:.2f}" if "ema_top1" in metrics else "")
        + f" | {metrics['images_per_sec']:.0f} img/s | best {best['top1']:.2f} (epoch {best['epoch']})"
    )
    if cfg.logger.csv:
        path = os.path.join(cfg.output_dir, "metrics.csv")
        new = not os.path.isfile(path)
        with open(path, "a", newline="") as f:
            csv_writer = csv.DictWriter(f, fieldnames=list(metrics))
            if new:
                csv_writer.writeheader()
            csv_writer.writerow(metrics)
    if cfg.logger.json:
        with open(os.path.join(cfg.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(metrics) + "\n")
    if writer is not None:
        for key, value in metrics.items():
            if key != "epoch":
                writer.add_scalar(key, value, metrics["epoch"])


def write_json(path: str, result: dict[str, Any], label: str) -> None:
    """``result`` to ``path`` (indented) and as one log line."""
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    _logger.info(f"{label}: {json.dumps(result)}")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
