"""Checkpoints of a training run: what one holds, writing it (atomically, every rank's RNG states gathered),
finding the one to resume from, and restoring a ``TrainState`` from it.

A checkpoint keeps its position as the samples of the epoch's global order already trained on, so a resume is
sample-exact with any number of processes; the lr schedule is rebuilt for the new run's updates per epoch at that
position. Everything is tensors and plain Python values (``torch.load(weights_only=True)`` reads it). Version 1
(batches per rank, no metrics history) is still read.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf, open_dict

from mixerzoo.models.checkpoint import CheckpointError, read_checkpoint
from mixerzoo.training.atomic import AtomicWriteError, atomic_write
from mixerzoo.training.config import RUN_OUTPUTS, run_outputs
from mixerzoo.training.outputs import write_metrics
from mixerzoo.training.state import TrainState

__all__ = [
    "CHECKPOINT_VERSION",
    "RUN_OUTPUTS",
    "STEP_PREFIX",
    "all_rng_states",
    "check_training_checkpoint",
    "check_unused_run_dir",
    "checkpoint_position",
    "checkpoint_progress",
    "history_from_metrics",
    "latest_checkpoint",
    "make_checkpoint",
    "resolve_resume",
    "restore",
    "rng_state",
    "save_atomic",
    "save_checkpoint",
    "set_rng_state",
    "step_checkpoints",
    "use_stored_config",
]

_logger = logging.getLogger("train")

CHECKPOINT_VERSION = 2  # 2: position in samples (any process count), metrics history; 1 is still read


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
    (disk full, no permission; also as torch's C++ writer reports it) removes its temporary file, leaves the previous
    ``path`` as it was and says which path could not be written, why, and the free space when it failed
    (``AtomicWriteError``)."""
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
    return ckpt["epoch"], checkpoint_position(ckpt)[0], ckpt["global_step"]


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


STORED_GROUPS = ("model", "data")  # what a checkpoint's stored config fills in: what its weights were made for


def use_stored_config(cfg: DictConfig, overrides: list[str]) -> None:
    """One rule for every run that starts from a training checkpoint (``eval_only``, fine-tuning with
    ``checkpoint=``, ``resume``): its stored ``model`` and ``data`` config fill in what the command line
    (``overrides``) does not say. A key the command sets (``model.drop_path_rate=0.1``, ``data.root=...``) is the
    command's; a group it chooses (``model=...``, ``data=...``, or an ``experiment=...``) is the command's whole. The
    log says which came from where. A checkpoint without a stored config (timm's, an official release) leaves the
    command's config as it is."""
    path = cfg.checkpoint or resolve_resume(cfg.resume, cfg.output_dir)
    if path is None or not os.path.isfile(path):
        return  # restore / run_eval_only say what is missing
    ckpt = read_checkpoint(path, mmap=True)
    stored = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(stored, dict):
        _logger.info(f"{path} stores no training config: model and data as this command's config says.")
        return
    said: dict[str, bool] = {}  # key -> deleted (~key)
    for override in overrides:
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
        set_here = ", ".join(f"{group}.{key}" for key in own)
        sources.append(f"{group} from the config stored in the checkpoint" + (f" except {set_here}" if own else ""))
    _logger.info(f"config of {path}: " + "; ".join(sources) + " (a key or group set on the command line wins).")


def make_checkpoint(cfg: DictConfig, state: TrainState, rng: list[dict[str, Any]]) -> dict[str, Any]:
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


def save_checkpoint(cfg: DictConfig, state: TrainState, *names: str) -> None:
    """All ranks gather RNG states; rank 0 writes the checkpoint to each of ``names`` in order, each atomically.
    A step checkpoint (``step_*.pth``) then drops the oldest beyond ``checkpoint_keep``."""
    rng = all_rng_states(state.world_size)
    if not state.primary:
        return
    ckpt = make_checkpoint(cfg, state, rng)
    for name in names:
        save_atomic(ckpt, os.path.join(state.output_dir, name))
    if any(name.startswith(STEP_PREFIX) for name in names):
        for old in step_checkpoints(state.output_dir)[: -cfg.checkpoint_keep]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)


def checkpoint_position(ckpt: dict[str, Any]) -> tuple[int, int | None, int]:
    """(samples of the epoch trained, updates per epoch or None if unknown, processes) of a checkpoint; version 1
    counted batches per rank."""
    if ckpt.get("version", 1) >= 2:
        return ckpt["samples_in_epoch"], ckpt["updates_per_epoch"], ckpt["world_size"]
    world_size = len(ckpt["rng"])
    return ckpt["batch_in_epoch"] * ckpt["config"]["batch_size"] * world_size, None, world_size


TRAINING_KEYS = ("model", "optimizer", "scaler", "epoch", "global_step", "best", "rng", "config")


def check_training_checkpoint(ckpt: Any, path: str) -> None:
    """A ``CheckpointError`` unless ``ckpt`` is a training checkpoint (what ``resume`` continues from): a file of
    weights only (a state dict, timm's or an official release) is named as such, with the option that takes it."""
    missing = [key for key in TRAINING_KEYS if not isinstance(ckpt, dict) or key not in ckpt]
    if not missing:
        return
    found = ""
    if isinstance(ckpt, dict):
        found = ", ".join(map(str, list(ckpt)[:6])) + (", ..." if len(ckpt) > 6 else "")
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
    samples, updates_per_epoch, world_size = checkpoint_position(ckpt)
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
            "continues from the same sample (with the same per-sample augmentation); the model's random states "
            "(drop path, dropout) start from this run's seeds and batch-level erasing and Mixup/CutMix are drawn per "
            "rank, so this is a continuation, not the uninterrupted run bit for bit."
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
