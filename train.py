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

Outputs in the run directory: ``last.pth`` (every epoch, and on SIGTERM/SIGUSR1 mid-epoch), ``best.pth`` and,
with ``checkpoint_every_steps=N``, ``step_<step>.pth`` every N optimizer steps (the newest ``checkpoint_keep``
kept); ``metrics.csv`` / ``metrics.jsonl`` (one row per epoch); ``summary.json``; ``train.log``; ``.hydra/`` (the
composed config); ``tensorboard/`` with ``logger=tensorboard``. Checkpoints, metrics and summary are written
atomically (``training/atomic.py``).

Resuming (``resume=auto`` or a checkpoint path) is sample-exact with any number of processes: a checkpoint keeps
its position as the samples of the epoch's global order already trained on, and the lr schedule is rebuilt for the
new run's updates per epoch at that position. The writes are ordered (``best.pth``, then ``last.pth``, then the
metrics files, then ``summary.json``) and every checkpoint carries the metrics history, so a crash at any point
leaves a consistent set and a resume rewrites what is missing. ``resume=auto`` takes the checkpoint furthest into
training (rank 0 decides for all ranks).

A SIGTERM/SIGUSR1 stops training after the current step; once ``last.pth`` and ``summary.json`` are written the
process exits (status 0), so a multirun sweep does not start its next job in a process told to stop.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import random
import re
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
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
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
from mixerzoo.models.checkpoint import CheckpointError, read_checkpoint
from mixerzoo.training.atomic import AtomicWriteError, atomic_write, remove_stale_temporaries
from mixerzoo.training.config import register_configs, run_outputs, validate_config
from mixerzoo.training.data import EpochBatchSampler, create_datasets, eval_loader, log_unused_samples, train_loader

_logger = logging.getLogger("train")
register_configs()

CHECKPOINT_VERSION = 2  # 2: position in samples (any process count), metrics history; 1 is still read
_stop_signal: str | None = None  # set by the SIGTERM/SIGUSR1 handler, read after every optimizer step; reset by fit


class StopSignalExit(SystemExit):
    """Raised by ``run`` when a SIGTERM/SIGUSR1 reached any rank, after ``last.pth`` and ``summary.json`` are
    written: the process ends (exit status 0) instead of returning, so Hydra's basic launcher, which runs a
    multirun's jobs one after another in this process, does not start the next job. ``resume=auto`` continues."""

    def __init__(self, message: str) -> None:
        super().__init__(0)
        self.message = message


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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # preemption (SIGTERM) and Slurm's --signal=USR1@<seconds>


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
    """Everything the loop reads and updates. ``epoch`` is the epoch in progress (0-based) and
    ``samples_in_epoch`` the samples of its global order that all ranks together have trained on: a position that
    means the same with any number of processes or batch size (restored from a checkpoint)."""

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
    """``torch.save`` through ``atomic_write``: a crash never leaves a half-written checkpoint, and a failed write
    (disk full, no permission) removes its temporary file, leaves the previous ``path`` as it was and says which
    path could not be written, why, and the free space when it failed (``AtomicWriteError``)."""
    try:
        with atomic_write(path) as f:
            torch.save(obj, f)
    except AtomicWriteError as err:
        error = AtomicWriteError(f"{err} Then continue the run with resume=auto.")
        error.errno = err.errno
        raise error from err


STEP_PREFIX = "step_"  # step checkpoints: step_<optimizer step, 8 digits>.pth
STEP_NAME = re.compile(rf"{STEP_PREFIX}(\d+)\.pth")


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:  # removed meanwhile (rotated by a running job)
        return 0.0


def step_checkpoints(output_dir: str) -> list[str]:
    """The run's step checkpoints in the order of their step (the number in the name), the earliest first. Not by
    write time: a copy of the run directory (``cp -r``) gives its files new times, in listing order."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m[1]), os.path.join(output_dir, n)) for n in os.listdir(output_dir) if (m := STEP_NAME.fullmatch(n))]
    return [path for _, path in sorted(found, key=lambda item: (item[0], _mtime(item[1])))]


def checkpoint_progress(ckpt: dict[str, Any]) -> tuple[int, int, int]:
    """How far into training a checkpoint stands: (epoch in progress, samples of it trained, optimizer step)."""
    return ckpt["epoch"], _position(ckpt)[0], ckpt["global_step"]


def latest_checkpoint(output_dir: str) -> str | None:
    """``resume=auto``: the readable checkpoint of the run (``last.pth`` or a step checkpoint) furthest into training
    by the position stored in it (``checkpoint_progress``); write time only breaks ties, so a copied run directory
    resumes where it stood. Unreadable ones are skipped with a warning; if there are checkpoints and none can be
    read, that is an error, not a fresh start over them."""
    last = os.path.join(output_dir, "last.pth")
    candidates = step_checkpoints(output_dir) + ([last] if os.path.isfile(last) else [])
    problems, ranked = [], []
    for path in candidates:
        try:
            progress = checkpoint_progress(read_checkpoint(path, mmap=True))
        except (CheckpointError, FileNotFoundError, KeyError, TypeError, IndexError) as err:
            if isinstance(err, (KeyError, TypeError, IndexError)):
                err = CheckpointError(f"{path!r} is not a train.py checkpoint ({type(err).__name__}: {err})")
            problems.append(str(err))
            _logger.warning(f"resume=auto: skipping {path}: {err}")
            continue
        ranked.append((progress, _mtime(path), path == last, path))
    if ranked:
        return max(ranked)[-1]
    if problems:
        raise CheckpointError(
            f"resume=auto: no readable checkpoint in {output_dir!r}:\n  " + "\n  ".join(problems) + "\nMove them "
            "away to start this run from scratch, or resume from another file (resume=<path>)."
        )
    return None


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """The checkpoint ``resume`` names (``auto``: ``latest_checkpoint``), or None. Under ``torch.distributed`` rank 0
    decides and broadcasts its answer (or its error), so all ranks restore the same file even if one of them would
    see the run directory differently (a checkpoint being rotated, a slow shared file system)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return _resolve_resume(resume, output_dir)
    answer: list[Any] = [None, None]  # path, error
    if dist.get_rank() == 0:
        try:
            answer[0] = _resolve_resume(resume, output_dir)
        except Exception as err:
            answer[1] = err
    dist.broadcast_object_list(answer, src=0)
    if answer[1] is not None:
        raise answer[1]
    return answer[0]


def _resolve_resume(resume: str | None, output_dir: str) -> str | None:
    if resume is None:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"resume={resume!r}: no such checkpoint file (use resume=auto or a path).")
    return resume


def check_unused_run_dir(output_dir: str) -> None:
    """Training without ``resume`` into a directory that holds a run would overwrite its checkpoints and mix two
    runs in its metrics: refused."""
    found = run_outputs(output_dir)
    if found:
        raise FileExistsError(
            f"{output_dir!r} already holds a run ({', '.join(found[:6])}). Continue it with resume=auto, or start "
            "a new run in another directory (hydra.run.dir=<new dir>, or leave hydra.run.dir unset for a fresh "
            "timestamped one)."
        )


def checkpoint(cfg: DictConfig, state: TrainState, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything a resume needs, as tensors and plain Python values (``weights_only=True`` loads it)."""
    return {
        "model": state.net.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "scaler": state.scaler.state_dict(),
        "ema": state.ema.module.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,  # the epoch in progress (0-based)
        "samples_in_epoch": state.samples_in_epoch,  # of its global order, all ranks together
        "epoch_loss_sum": state.epoch_loss_sum,
        "epoch_updates": state.epoch_updates,
        "global_step": state.global_step,
        "updates_per_epoch": state.updates_per_epoch,
        "global_batch": state.global_batch,
        "world_size": state.world_size,
        "best": state.best,
        "history": state.history,
        "rng": rng,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "version": CHECKPOINT_VERSION,
    }


def save(cfg: DictConfig, state: TrainState, *names: str) -> None:
    """All ranks gather RNG states; rank 0 writes the checkpoint to each of ``names`` in order, each atomically.
    A step checkpoint (``step_*.pth``) then drops the oldest beyond ``checkpoint_keep``."""
    rng = all_rng_states(state.world_size)
    if not state.primary:
        return
    ckpt = checkpoint(cfg, state, rng)
    for name in names:
        save_atomic(ckpt, os.path.join(state.output_dir, name))
    if any(name.startswith(STEP_PREFIX) for name in names):
        for old in step_checkpoints(state.output_dir)[: -cfg.checkpoint_keep]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)


def _position(ckpt: dict[str, Any]) -> tuple[int, int | None, int]:
    """(samples of the epoch trained, updates per epoch or None if unknown, processes) of a checkpoint; version 1
    counted batches per rank."""
    if ckpt.get("version", 1) >= 2:
        return ckpt["samples_in_epoch"], ckpt["updates_per_epoch"], ckpt["world_size"]
    world_size = len(ckpt["rng"])
    return ckpt["batch_in_epoch"] * ckpt["config"]["batch_size"] * world_size, None, world_size


TRAINING_KEYS = ("model", "optimizer", "scaler", "epoch", "global_step", "best", "rng", "config")


def check_training_checkpoint(ckpt: Any, path: str) -> None:
    """A ``CheckpointError`` unless ``ckpt`` is a ``train.py`` checkpoint (what ``resume`` continues from): a file of
    weights only (a state dict, timm's or an official release) is named as such, with the option that takes it."""
    missing = [key for key in TRAINING_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if not missing:
        return
    found = ", ".join(map(str, list(ckpt)[:6])) + (", ..." if len(ckpt) > 6 else "") if isinstance(ckpt, dict) else ""
    raise CheckpointError(
        f"resume={path!r} is not a train.py checkpoint: it has no {', '.join(missing)} entries"
        + (f" (its entries: {found})" if found else "")
        + ". resume continues a training run from its last.pth or step_*.pth; to start a new run from a file of "
        "weights, use checkpoint=<path> (fine-tuning; another class count gets a new classifier)."
    )


def restore(cfg: DictConfig, state: TrainState) -> bool:
    """Continue from ``cfg.resume`` where it stopped: weights, optimizer, scaler, EMA, position, best score, metrics
    history and (same process count) every rank's RNGs; the lr schedule is set for that position. With another
    number of processes or batch size the run continues from the same sample of the epoch's global order, and the
    schedule, rebuilt for the new updates per epoch, from the same fraction of training. Returns whether a
    checkpoint was loaded."""
    path = resolve_resume(cfg.resume, state.output_dir)
    if path is None:
        if cfg.resume == "auto":
            _logger.info(f"resume=auto: no checkpoint in {state.output_dir}, starting from scratch")
        return False
    ckpt = read_checkpoint(path)
    check_training_checkpoint(ckpt, path)
    if ckpt.get("version", 1) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path!r} has format version {ckpt['version']}, newer than this train.py reads "
            f"({CHECKPOINT_VERSION}): update the zoo."
        )
    state.net.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and ckpt["ema"] is not None:
        state.ema.module.load_state_dict(ckpt["ema"])
    samples, updates_per_epoch, world_size = _position(ckpt)
    same_schedule = (
        ckpt["config"]["epochs"] == cfg.epochs
        and ckpt["config"]["sched"] == OmegaConf.to_container(cfg.sched, resolve=True)
        and updates_per_epoch == state.updates_per_epoch
    )
    if state.scheduler is not None and ckpt["scheduler"] is not None and same_schedule:
        state.scheduler.load_state_dict(ckpt["scheduler"])  # (what a plateau schedule has learnt cannot be replayed)
    state.epoch, state.samples_in_epoch, state.global_step = ckpt["epoch"], samples, ckpt["global_step"]
    state.epoch_loss_sum, state.epoch_updates = ckpt.get("epoch_loss_sum", 0.0), ckpt.get("epoch_updates", 0)
    state.best = ckpt["best"]
    if "history" in ckpt:
        state.history = ckpt["history"]
    else:  # a version-1 checkpoint: its epochs' rows are only in the metrics files
        state.history = history_from_metrics([os.path.dirname(os.path.abspath(path)), state.output_dir], state.epoch)
        if len(state.history) < state.epoch:
            _logger.warning(
                f"{path} (format version 1) holds no metrics history and its run's metrics.jsonl/metrics.csv have "
                f"{len(state.history)} of its {state.epoch} epoch(s): metrics and summary.json cover those and the "
                "epochs trained from now on."
            )
    if world_size == state.world_size:
        set_rng_state(ckpt["rng"][state.rank])
    else:
        _logger.warning(
            f"checkpoint written by {world_size} process(es), resumed with {state.world_size}: the training order "
            "continues from the same sample; augmentation RNGs are reseeded."
        )
    if not same_schedule:
        _logger.warning(
            f"the lr schedule is rebuilt from this config (epochs {ckpt['config']['epochs']} -> {cfg.epochs}, "
            f"updates per epoch {updates_per_epoch or 'unknown'} -> {state.updates_per_epoch}"
            f"{', sched changed' if ckpt['config']['sched'] != OmegaConf.to_container(cfg.sched) else ''}), at step "
            f"{state.schedule_position:g} of {state.num_epochs * state.updates_per_epoch}."
        )
    if samples > state.samples_per_epoch:
        _logger.warning(
            f"the checkpoint trained {samples} samples of epoch {state.epoch + 1}; an epoch of this configuration "
            f"trains {state.samples_per_epoch}: that epoch ends now."
        )
    if state.scheduler is not None:  # set the lr for where the run stands
        state.scheduler.step(state.epoch)
        state.scheduler.step_update(state.schedule_position)
    if state.primary:
        write_metrics(cfg, state.output_dir, state.history, repair=True)
        if cfg.resume != "auto":
            warn_of_checkpoints_ahead(state.output_dir, state.global_step)
    _logger.info(f"resumed from {path}: epoch {state.epoch + 1}, {samples} samples into it, step {state.global_step}")
    return True


def history_from_metrics(folders: list[str], epochs: int) -> list[dict[str, Any]]:
    """The metrics rows of epochs 1..``epochs`` from the first of ``folders`` with a ``metrics.jsonl`` or
    ``metrics.csv``: the history of a version-1 checkpoint, which carries none. Both files are read and merged per
    epoch (the JSON row wins: typed values), so an epoch only one of them holds is kept. Version 1 appended its rows,
    so a repeated epoch keeps its last row and a torn last line is skipped."""
    rows: list[dict[str, Any]] = []
    for folder in dict.fromkeys(folders):
        jsonl, table = os.path.join(folder, "metrics.jsonl"), os.path.join(folder, "metrics.csv")
        if os.path.isfile(table):
            with open(table, newline="") as f:
                rows += [  # a torn last line reads with None for its missing fields: skipped
                    {key: _number(value) for key, value in row.items()}
                    for row in csv.DictReader(f)
                    if None not in row.values()
                ]
        if os.path.isfile(jsonl):
            with open(jsonl) as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        rows.append(json.loads(line))
        if rows:
            break
    by_epoch = {row["epoch"]: row for row in rows if isinstance(row, dict) and isinstance(row.get("epoch"), int)}
    return [by_epoch[epoch] for epoch in sorted(by_epoch) if 1 <= epoch <= epochs]


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def warn_of_checkpoints_ahead(output_dir: str, step: int) -> None:
    """A run resumed from an explicit, older checkpoint into a directory with step checkpoints further on: a later
    ``resume=auto`` would take those (it goes by progress), not this run's own line."""
    ahead = [p for p in step_checkpoints(output_dir) if int(STEP_NAME.fullmatch(os.path.basename(p))[1]) > step]
    if ahead:
        names = ", ".join(os.path.basename(p) for p in ahead[:4]) + (", ..." if len(ahead) > 4 else "")
        _logger.warning(
            f"{output_dir} holds step checkpoints beyond this resume's step {step} ({names}), from another line of "
            "training: a later resume=auto would continue from them. Move them away, or branch into a new "
            "hydra.run.dir."
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
        flags = torch.stack([update_loss, torch.full((), float(_stop_signal is not None), device=device)])
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
            save(cfg, state, f"{STEP_PREFIX}{state.global_step:08d}.pth")
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


# --- the job -------------------------------------------------------------------------------------------------
def setup(cfg: DictConfig) -> tuple[EvalState, Dataset]:
    """Runtime, datasets, the model (with ``cfg.checkpoint``'s weights) and the validation loader; returns them
    with the training set. The config is validated first (unknown keys added with ``+``, values like ``epochs=0``)."""
    validate_config(cfg)
    if not cfg.eval_only and cfg.resume is None:
        check_unused_run_dir(cfg.output_dir)
    info = setup_runtime(cfg)
    if cfg.eval_only or cfg.checkpoint or cfg.resume is not None:
        use_stored_config(cfg)  # after the process group is up: resume=auto is resolved by rank 0
    device, rank, world_size = info["device"], info["global_rank"], info["world_size"]
    if info["primary"]:
        os.makedirs(cfg.output_dir, exist_ok=True)
        for name in remove_stale_temporaries(cfg.output_dir):  # left by a process killed while it saved
            _logger.info(f"removed {name}, an unfinished write of an earlier process")
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
    if cfg.checkpoint:  # fine-tuning onto another class count: the classifier that does not fit starts afresh
        layout = mixerzoo.load_checkpoint(net, cfg.checkpoint, reset_classifier=not cfg.eval_only)
        _logger.info(f"loaded weights from {cfg.checkpoint} ({layout} layout)")
    eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    loader = eval_loader(val_ds, eval_batch_size, cfg.data, device, rank, world_size, ignored=STOP_SIGNALS)
    return EvalState(net, loader, device, rank, world_size, cfg.output_dir, num_params), train_ds


def command_overrides() -> list[str]:
    """The overrides given on this command line (none when the config was composed in Python)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


STORED_GROUPS = ("model", "data")  # what a checkpoint's stored config fills in: what its weights were made for


def use_stored_config(cfg: DictConfig) -> None:
    """One rule for every run that starts from a ``train.py`` checkpoint (``eval_only``, fine-tuning with
    ``checkpoint=``, ``resume``): its stored ``model`` and ``data`` config fill in what this command does not say. A
    key the command sets (``model.drop_path_rate=0.1``, ``data.root=...``) is the command's; a group it chooses
    (``model=...``, ``data=...``, or an ``experiment=...``) is the command's whole. The log says which came from where.
    A checkpoint without a stored config (timm's, an official release) leaves the command's config as it is."""
    path = cfg.checkpoint or resolve_resume(cfg.resume, cfg.output_dir)
    if path is None or not os.path.isfile(path):
        return  # restore / run_eval_only say what is missing
    ckpt = read_checkpoint(path, mmap=True)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(stored, dict):
        _logger.info(f"{path} stores no training config: model and data as this command's config says.")
        return
    said: dict[str, bool] = {}  # key -> deleted (~key)
    for override in command_overrides():
        key = override.split("=", 1)[0]
        said[key.lstrip("+~")] = key.startswith("~")
    sources = []
    for group in STORED_GROUPS:
        if group in said or "experiment" in said or not isinstance(stored.get(group), dict):
            reason = "chosen by this command" if group in said or "experiment" in said else "none stored"
            sources.append(f"{group} from this command's config ({reason})")
            continue
        own = {key[len(group) + 1 :]: deleted for key, deleted in said.items() if key.startswith(f"{group}.")}
        with open_dict(cfg):
            if dataclasses.is_dataclass(OmegaConf.get_type(cfg[group])):  # a typed group: fill key by key
                for key, value in stored[group].items():
                    if key in cfg[group] and key not in own:
                        cfg[group][key] = value
            else:  # a free-form group (model): the stored one, then this command's keys on top
                merged = OmegaConf.create(stored[group])
                for key, deleted in own.items():
                    if deleted:
                        parent, _, leaf = key.rpartition(".")
                        node = OmegaConf.select(merged, parent) if parent else merged
                        if isinstance(node, DictConfig) and leaf in node:
                            del node[leaf]
                    else:
                        OmegaConf.update(merged, key, OmegaConf.select(cfg[group], key), force_add=True)
                cfg[group] = merged
        set_here = [f"{group}.{key}" for key in own]
        sources.append(
            f"{group} from the config stored in the checkpoint" + (f" except {', '.join(set_here)}" if set_here else "")
        )
    _logger.info(f"config of {path}: " + "; ".join(sources) + " (a key or group set on the command line wins).")


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
    num_batches = len(train_ds) // world_size // cfg.batch_size  # per rank; the last partial batch is dropped
    if cfg.limit_train_batches is not None:
        num_batches = min(num_batches, cfg.limit_train_batches)
    updates_per_epoch = num_batches // accum
    if updates_per_epoch == 0:
        raise ValueError(
            f"No full training step per epoch: {len(train_ds)} images over {world_size} process(es) with "
            f"batch_size={cfg.batch_size} x grad_accum_steps={accum}. Lower them."
        )
    limited = cfg.limit_train_batches is not None
    log_unused_samples(len(train_ds), updates_per_epoch * global_batch, limited)
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


def fit(cfg: DictConfig, state: TrainState) -> None:
    """Train from where ``state`` stands to ``state.num_epochs``, evaluating (model and EMA), checkpointing and
    logging after every epoch; a SIGTERM/SIGUSR1 checkpoints and stops.

    After an epoch the writes go in this order: ``best.pth`` (if it is the best), ``last.pth``, the metrics files.
    A crash between any two leaves a consistent set: ``last.pth`` never names a best epoch that ``best.pth`` does
    not hold, and a resume from it rewrites metrics rows that were not written (the checkpoint carries them)."""
    global _stop_signal
    _stop_signal = None  # a signal that stopped an earlier run of this process (a multirun job) is not this one's
    previous_handlers = {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}
    writer = open_tensorboard(cfg, state.output_dir) if state.primary else None
    try:
        while state.epoch < state.num_epochs:
            train_metrics = train_one_epoch(cfg, state)
            if train_metrics is None:
                save(cfg, state, "last.pth")
                _logger.warning(
                    f"stopped by {_stop_signal or 'a stop signal on another process'} at epoch {state.epoch + 1}, "
                    f"{state.samples_in_epoch} samples into it (step {state.global_step}): checkpoint written."
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
            save(cfg, state, *(["best.pth"] if is_best else []), "last.pth")
            if state.primary:
                log_epoch(cfg, metrics, writer, state)
            if state.stop_requested or stop_signal_anywhere(state):
                state.stop_requested = True
                _logger.warning(f"stopped by a stop signal after epoch {state.epoch}: checkpoint written.")
                break
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
        if writer is not None:
            writer.close()


def stop_signal_anywhere(state: TrainState) -> bool:
    """Whether a stop signal reached any rank (a collective: every rank calls it, once per epoch)."""
    flag = torch.tensor(float(_stop_signal is not None), device=state.device)
    if state.world_size > 1:
        dist.all_reduce(flag)
    return bool(flag.item())


def stop_signals(state: TrainState) -> dict[int, str]:
    """rank -> the stop signal it received during ``fit`` (a collective under DDP: every rank calls it)."""
    names: list[Any] = [_stop_signal]
    if state.world_size > 1:
        names = [None] * state.world_size
        dist.all_gather_object(names, _stop_signal)
    return {rank: name for rank, name in enumerate(names) if name}


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


def run(cfg: DictConfig) -> float:
    """Train (or, with ``eval_only``, evaluate) as configured; returns the best validation top-1 (%)."""
    evaluation, train_ds = setup(cfg)
    if cfg.eval_only:
        return run_eval_only(cfg, evaluation)
    state = build(cfg, evaluation, train_ds)
    resumed = restore(cfg, state)
    finished = resumed and state.epoch >= state.num_epochs
    if finished and summary_is_complete(os.path.join(state.output_dir, "summary.json")):
        _logger.info(f"the run in {state.output_dir} has finished all {state.num_epochs} epochs: nothing to do.")
        return state.best["top1"]
    signals: dict[int, str] = {}
    if not finished:
        fit(cfg, state)
        signals = stop_signals(state)
    top1 = summarise(cfg, state, signals)
    if signals:
        message = (
            f"{'/'.join(sorted(set(signals.values())))} received (rank(s) {', '.join(map(str, sorted(signals)))}): "
            f"checkpoint and summary written at epoch {state.epoch} of {state.num_epochs}; this process ends now "
            "(exit status 0), and a multirun sweep's later jobs are not started. Run the same command with "
            "resume=auto (and, for a sweep, the same hydra.sweep.dir) to continue."
        )
        if state.primary:
            _logger.warning(message)
        raise StopSignalExit(message)
    return top1


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


def run_eval_only(cfg: DictConfig, evaluation: EvalState) -> float:
    """Evaluate ``checkpoint`` (already loaded), or the checkpoint ``resume`` points at (model and EMA weights)."""
    net = evaluation.net
    results: dict[str, Any] = {"params": evaluation.num_params}
    resume_path = resolve_resume(cfg.resume, evaluation.output_dir)
    ema_weights = None
    if not cfg.checkpoint:
        if resume_path is None:
            raise ValueError("eval_only=true needs checkpoint=<path> (or resume=<path> / resume=auto with a last.pth).")
        ckpt = read_checkpoint(resume_path)
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


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
