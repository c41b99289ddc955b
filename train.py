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

import logging
import os
from typing import Any

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import Dataset

import mixerzoo  # registers the zoo's models in timm (also used: mixerzoo.load_checkpoint)
from mixerzoo.models import build_model
from mixerzoo.models.checkpoint import read_checkpoint
from mixerzoo.models.factory import legacy_spec
from mixerzoo.training import signals
from mixerzoo.training.atomic import remove_stale_temporaries
from mixerzoo.training.checkpoints import check_unused_run_dir, resolve_resume, restore, use_stored_config
from mixerzoo.training.config import register_configs, validate_config
from mixerzoo.training.data import create_datasets, eval_loader
from mixerzoo.training.errors import user_errors
from mixerzoo.training.loop import evaluate, fit
from mixerzoo.training.outputs import summarise, summary_is_complete, write_json
from mixerzoo.training.runtime import setup_runtime
from mixerzoo.training.signals import StopSignalExit
from mixerzoo.training.state import EvalState, build_train_state

_logger = logging.getLogger("train")
register_configs()


def setup(cfg: DictConfig) -> tuple[EvalState, Dataset]:
    """Runtime, datasets, the model (with ``cfg.checkpoint``'s weights) and the validation loader; returns them
    with the training set. The config is validated first (unknown keys added with ``+``, values like ``epochs=0``)."""
    validate_config(cfg)
    if not cfg.eval_only and cfg.resume is None:
        check_unused_run_dir(cfg.output_dir)
    info = setup_runtime(cfg)
    if cfg.eval_only or cfg.checkpoint or cfg.resume is not None:  # the checkpoint's model and data fill in
        use_stored_config(cfg, command_overrides())  # after the process group is up: rank 0 resolves resume=auto
    device, rank, world_size = info["device"], info["global_rank"], info["world_size"]
    if info["primary"]:
        os.makedirs(cfg.output_dir, exist_ok=True)
        for name in remove_stale_temporaries(cfg.output_dir):  # left by a process killed while it saved
            _logger.info(f"removed {name}, an unfinished write of an earlier process")
    else:
        logging.getLogger().setLevel(logging.WARNING)
    train_ds, val_ds = create_datasets(cfg.data, cfg.aug, seed=cfg.seed)
    if "_target_" in cfg.model:  # the stored config of a checkpoint from an earlier version
        with open_dict(cfg):
            cfg.model = OmegaConf.create(legacy_spec(cfg.model))
    net = build_model(cfg.model, cfg.data).to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.runtime.grad_checkpointing:
        net.set_grad_checkpointing(True)
    num_params = sum(p.numel() for p in net.parameters())
    _logger.info(
        f"model {cfg.model.name}: {num_params / 1e6:.3f}M params | "
        f"data {cfg.data.name}: {len(train_ds)} train / {len(val_ds)} val images, {cfg.data.num_classes} classes, "
        f"{cfg.data.img_size}px | {world_size} process(es) on {device.type}, {cfg.runtime.precision}, "
        f"{torch.get_num_threads()} thread(s) each"
    )
    if cfg.checkpoint:  # fine-tuning onto another class count: the classifier that does not fit starts afresh
        layout = mixerzoo.load_checkpoint(net, cfg.checkpoint, reset_classifier=not cfg.eval_only)
        _logger.info(f"loaded weights from {cfg.checkpoint} ({layout} layout)")
    eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    loader = eval_loader(val_ds, eval_batch_size, cfg.data, device, rank, world_size, ignored=signals.STOP_SIGNALS)
    return EvalState(net, loader, device, rank, world_size, cfg.output_dir, num_params), train_ds


def command_overrides() -> list[str]:
    """The overrides given on this command line (none when the config was composed in Python)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run(cfg: DictConfig) -> float:
    """Train (or, with ``eval_only``, evaluate) as configured; returns the best validation top-1 (%)."""
    evaluation, train_ds = setup(cfg)
    if cfg.eval_only:
        return run_eval_only(cfg, evaluation)
    state = build_train_state(cfg, evaluation, train_ds)
    resumed = restore(cfg, state)
    finished = resumed and state.epoch >= state.num_epochs
    if finished and summary_is_complete(os.path.join(state.output_dir, "summary.json")):
        _logger.info(f"the run in {state.output_dir} has finished all {state.num_epochs} epochs: nothing to do.")
        return state.best["top1"]
    stopped: dict[int, str] = {}  # rank -> the stop signal it received
    if not finished:
        fit(cfg, state)
        stopped = signals.stop_signals(state.world_size)
    top1 = summarise(cfg, state, stopped)
    if stopped:
        message = (
            f"{'/'.join(sorted(set(stopped.values())))} received (rank(s) {', '.join(map(str, sorted(stopped)))}): "
            f"checkpoint and summary written at epoch {state.epoch} of {state.num_epochs}; this process ends now "
            "(exit status 0), and a multirun sweep's later jobs are not started. Run the same command with "
            "resume=auto (and, for a sweep, the same hydra.sweep.dir) to continue."
        )
        if state.primary:
            _logger.warning(message)
        raise StopSignalExit(message)
    return top1


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


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        with user_errors("train.py"):  # an expected user error: one line (MIXERZOO_DEBUG=1 for the traceback)
            return run(cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
