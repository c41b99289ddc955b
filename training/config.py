"""Structured-config schema of ``configs/train.yaml``: every key, its type and its default.

``register_configs()`` stores the schema in Hydra's ConfigStore as ``train_schema``, the first entry of
``train.yaml``'s defaults list. With it a mistyped key (``optim.lrr=1``) or a value of the wrong type
(``epochs=ten``) is a composition error instead of a silently ignored setting. The ``model`` node is free-form:
it is a model spec (``name`` plus options, ``mixerzoo.models.build_model``), and the builder rejects unknown
options itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

__all__ = ["CONFIG_DIR", "TrainConfig", "register_configs", "validate_config"]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DataConfig:
    """What to train on; ``num_classes``, ``in_chans`` and ``img_size`` are passed on to the model."""

    name: str = "digits"  # digits | folder | fake
    root: str | None = None  # folder: ImageFolder root with train/ and val/ (or a .tar); others ignore it
    dataset: str = ""  # folder: timm create_dataset name ('' = folder or tar, 'wds/...' = WebDataset)
    train_split: str = "train"
    val_split: str = "validation"  # also found as val/, valid/ (or <name>.tar); a missing split is an error
    num_classes: int | None = None  # null: from the data (digits: 10; folder: its class folders); fake needs it
    in_chans: int = 3
    img_size: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, center crop img_size
    interpolation: str = "bicubic"  # eval resize
    num_workers: int | None = 4  # null: from the CPUs of the process (training/data.py default_num_workers)
    pin_memory: bool = True
    val_fraction: float = 0.2  # digits: held-out share of the 1797 images (fixed stratified split)
    fake_train_size: int = 1024  # fake: images per epoch
    fake_val_size: int = 256
    pathfinder_difficulty: str = "hard"  # pathfinder: easy | medium | hard contour length (training/pathfinder.py)
    pathfinder_train_size: int = 20000  # pathfinder: images in the train split
    pathfinder_val_size: int = 2000
    pathfinder_seed: int = 0  # pathfinder: the images' seed (the run's seed does not change them)
    cache_dir: str | None = None  # generated datasets (pathfinder): .npy cache folder; null: in memory only


@dataclass
class AugConfig:
    """timm ``create_transform`` options for training, Mixup/CutMix and label smoothing."""

    no_aug: bool = False
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float | None = 0.4  # ignored by timm when auto_augment is set
    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5-inc1
    train_interpolation: str = "random"
    re_prob: float = 0.0  # random erasing
    re_mode: str = "pixel"
    re_count: int = 1
    mixup: float = 0.0  # Mixup alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    cutmix_minmax: list[float] | None = None
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mixup_off_epoch: int = 0  # turn Mixup/CutMix off from this epoch on (0 = never)
    smoothing: float = 0.1  # label smoothing


@dataclass
class OptimConfig:
    """timm ``create_optimizer_v2`` options, plus accumulation and clipping."""

    opt: str = "adamw"  # any timm optimizer name: adamw, lamb, sgd, ...
    lr: float = 1e-3
    lr_base_size: int | None = None  # if set, lr is for this global batch and scales linearly with the real one
    weight_decay: float = 0.05  # not applied to biases, norms, 1-d params and model.no_weight_decay()
    momentum: float = 0.9  # sgd
    betas: list[float] | None = None
    eps: float | None = None
    layer_decay: float | None = None  # e.g. 0.75 (uses model.group_matcher())
    grad_accum_steps: int = 1
    clip_grad: float | None = None
    clip_mode: str = "norm"  # norm | value | agc


@dataclass
class SchedConfig:
    """timm ``create_scheduler_v2`` options."""

    sched: str = "cosine"  # cosine | step | multistep | plateau | poly | tanh | wsd | none (constant lr)
    on_updates: bool = True  # step the lr every optimizer update (False: once per epoch, as the papers did)
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    warmup_prefix: bool = False
    min_lr: float = 1e-5
    cooldown_epochs: int = 0  # extra epochs at min_lr after the cosine (timm-era recipes: +10)
    decay_epochs: float = 90
    decay_rate: float = 0.1


@dataclass
class DistributedConfig:
    backend: str | None = None  # None: nccl on CUDA, gloo on CPU
    find_unused_parameters: bool = False


@dataclass
class RuntimeConfig:
    """Where and how the model runs."""

    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode, e.g. max-autotune
    compile_backend: str = "inductor"  # torch.compile backend ("eager": trace only, for quick checks)
    grad_checkpointing: bool = False
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.deterministic
    num_threads: int | None = None  # torch.set_num_threads (None: torch's default)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = False
    force_cpu: bool = False


@dataclass
class LoggerConfig:
    log_interval: int = 50  # console line every N optimizer steps (when no progress bar is drawn)
    progress_bar: bool | None = None  # None: a bar when stderr is a terminal
    csv: bool = True  # metrics.csv
    json: bool = True  # metrics.jsonl
    tensorboard: bool = False  # needs the tensorboard package; skipped with a warning if it is missing


@dataclass
class TrainConfig:
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)

    epochs: int = 30
    batch_size: int = 64  # per process and per micro-step; global = batch_size * world_size * grad_accum_steps
    eval_batch_size: int | None = None  # default: 2 * batch_size
    seed: int = 0
    resume: str | None = None  # auto (newest of last.pth / step checkpoints in output_dir, if any) | a path | null
    checkpoint: str | None = None  # weights to start from (fine-tuning: another class count gets a new head) or eval
    checkpoint_every_steps: int | None = None  # also write step_<N>.pth every N optimizer steps (resumable mid-epoch)
    checkpoint_keep: int = 2  # step checkpoints kept (the newest); last.pth and best.pth are always kept
    eval_only: bool = False
    limit_train_batches: int | None = None  # cap on batches per epoch (smoke and throughput runs)
    limit_val_batches: int | None = None
    output_dir: str = "outputs"
    name: str = "train"


# Values the schema's types allow but training cannot use: key -> (smallest valid value, what to set instead).
# None is accepted where the schema allows it (it means "off" or "automatic" there).
_LOWER_BOUNDS: dict[str, tuple[int, str]] = {
    "epochs": (1, "epochs=1 or more (with an experiment, debug=smoke runs one tiny epoch)"),
    "batch_size": (1, "batch_size=1 or more (images per process and micro-step)"),
    "eval_batch_size": (1, "eval_batch_size=1 or more, or null for 2 x batch_size"),
    "limit_train_batches": (1, "limit_train_batches=1 or more, or null for whole epochs"),
    "limit_val_batches": (1, "limit_val_batches=1 or more, or null for the whole validation set"),
    "checkpoint_every_steps": (1, "checkpoint_every_steps=1 or more (optimizer steps), or null for epoch ends only"),
    "checkpoint_keep": (1, "checkpoint_keep=1 or more (step checkpoints kept)"),
    "optim.grad_accum_steps": (1, "optim.grad_accum_steps=1 (no accumulation) or more"),
    "data.num_classes": (1, "data.num_classes=1 or more, or null to take it from the data (digits, folder)"),
    "data.in_chans": (1, "data.in_chans=3 (RGB) or 1 (grey)"),
    "data.img_size": (1, "data.img_size=1 or more (pixels; e.g. 224)"),
    "data.num_workers": (0, "data.num_workers=0 (load in the main process) or more"),
    "data.fake_train_size": (1, "data.fake_train_size=1 or more"),
    "data.fake_val_size": (1, "data.fake_val_size=1 or more"),
    "sched.warmup_epochs": (0, "sched.warmup_epochs=0 (no warmup) or more"),
    "sched.cooldown_epochs": (0, "sched.cooldown_epochs=0 (no cooldown) or more"),
    "logger.log_interval": (1, "logger.log_interval=1 or more (optimizer steps between log lines)"),
}


def _unknown_keys(cfg: DictConfig, schema: type, prefix: str = "") -> list[str]:
    """Messages for keys of ``cfg`` that the dataclass ``schema`` does not have (added with ``+key=value``), in
    every schema node except the free-form ``model``."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    problems = []
    for key in cfg:
        path = f"{prefix}{key}"
        if key not in fields:
            value = OmegaConf.select(cfg, str(key), throw_on_missing=False)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"did you mean {prefix}{close[0]}? Set it without '+': {prefix}{close[0]}={value}" if close else ""
            node = f"{prefix[:-1]} ({schema.__name__})" if prefix else f"the top level ({schema.__name__})"
            problems.append(
                f"unknown key {path} (= {value}, added with +{path}=... or by a config file): {node} has no such "
                f"key, so it would be stored and ignored; {hint or 'remove it'}. Keys there: {', '.join(fields)}."
            )
            continue
        factory = fields[key].default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory) and isinstance(cfg[key], DictConfig):
            problems += _unknown_keys(cfg[key], factory, f"{path}.")
    return problems


# Spec slots of the free-form ``model`` node whose mappings must name what they build: a token-mixer spec and a
# channel-mixer spec are a registered name or a mapping with ``name`` plus options.
SPEC_KEYS = {"model.mixer": "mixer", "model.block.mlp": "channel mixer"}


def _brace(options: dict[str, Any]) -> str:
    """Hydra's brace syntax for a mapping: ``{name:<name>,head_dim:16}``."""
    return "{name:<name>," + ",".join(f"{k}:{v}" for k, v in options.items()) + "}"


def _specs_at(node: Any, key: str, where: str = "") -> list[tuple[str, Any]]:
    """``(path, value)`` for the dotted ``key`` below ``node``, a list on the way (one block spec per stage, one
    mixer per stage) giving one value per item: ``model.block.mlp`` of a per-stage block list is each block's."""
    if OmegaConf.is_list(node):
        return [hit for i, item in enumerate(node) for hit in _specs_at(item, key, f"{where}[{i}]")]
    if not key:
        return [(where, node)]
    if not OmegaConf.is_dict(node):
        return []
    head, _, rest = key.partition(".")
    if head not in node:
        return []
    return _specs_at(node[head], rest, f"{where}.{head}" if where else head)


def _specs_without_name(cfg: DictConfig) -> list[str]:
    """Messages for mixer specs that are mappings without ``name``: what ``+model.mixer.head_dim=16`` (Hydra's
    advice after ``model.mixer.head_dim=16`` fails on a mixer given by name) makes of the mixer. Without this check
    the mixer is silently replaced by its option and the build fails later with a message that does not say why."""
    problems = []
    for key, kind in SPEC_KEYS.items():
        for where, spec in _specs_at(cfg, key):
            if not OmegaConf.is_dict(spec) or "name" in spec:
                continue
            options = OmegaConf.to_container(spec, resolve=False)
            dotted = " ".join(f"+{where}.{k}={v}" for k, v in options.items())
            problems.append(
                f"{where} is {options}: a {kind} spec is a registered name or a mapping with 'name' plus options, "
                f"and this one has no 'name'. '{dotted}' (Hydra's advice when {where} is a name) replaces the "
                f"whole {kind} by its options. Give the {kind} and its options as one value, quoted for the "
                f"shell: '{where.split('[')[0]}={_brace(options)}' (a list of such specs sets one per stage; "
                f"python -m mixerzoo mixers lists the names and options)."
            )
    return problems


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config once, before anything is built: no keys the schema lacks (``+optim.lrr=1`` is
    accepted by Hydra and would be silently ignored), no mixer spec that lost its name (``+model.mixer.head_dim=16``
    replaces the mixer by its option) and no values that the types allow but training cannot use (``epochs=0``,
    ``batch_size=0``, ...). Raises ``ValueError`` naming each key and its fix."""
    problems = _unknown_keys(cfg, TrainConfig) + _specs_without_name(cfg)
    for key, (minimum, fix) in _LOWER_BOUNDS.items():
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if value is None or value == "???" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value < minimum:
            problems.append(f"{key}={value} is not allowed (must be >= {minimum}): set {fix}.")
    val_fraction = OmegaConf.select(cfg, "data.val_fraction", throw_on_missing=False)
    if isinstance(val_fraction, int | float) and not 0 < val_fraction < 1:
        problems.append(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive): e.g. 0.2.")
    if problems:
        raise ValueError("Invalid config:\n  - " + "\n  - ".join(problems))


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


RUN_OUTPUTS = ("last.pth", "best.pth", "metrics.csv", "metrics.jsonl", "summary.json")  # and step_*.pth


def run_outputs(output_dir: str) -> list[str]:
    """The files of a training run that ``output_dir`` already holds (checkpoints, metrics, summary)."""
    if not os.path.isdir(output_dir):
        return []
    found = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(output_dir, name))]
    return found + sorted(n for n in os.listdir(output_dir) if n.startswith("step_") and n.endswith(".pth"))


def config_record_dir(subdir: str, *, _root_: DictConfig) -> str | None:
    """``hydra.output_subdir``, where Hydra records a job's config (``.hydra/``): ``subdir`` on rank 0; null (nothing
    recorded) elsewhere, and where the run directory already holds a run that this job does not go on training: a
    re-run without ``resume`` (which train.py refuses) or an evaluation. Hydra writes the record before train.py
    starts, so this is the one place to keep the finished run's ``config.yaml`` and ``overrides.yaml`` its own."""
    if _rank() != 0:
        return None
    output_dir = OmegaConf.select(_root_, "hydra.runtime.output_dir", default=None)
    continues = _root_.get("resume") is not None and not _root_.get("eval_only")
    if output_dir and not continues and run_outputs(output_dir):
        return None
    return subdir


def run_id() -> str:
    """The run directory's name: ``<date>/<time with ms>`` (no two runs share it, even within a second), or
    ``<date>/torchrun_<run id>`` under torchrun, where every rank composes the config and must agree on it."""
    now = datetime.now()
    torchrun_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if torchrun_id != "none":
        return f"{now:%Y-%m-%d}/torchrun_{torchrun_id}"
    return f"{now:%Y-%m-%d}/{now:%H-%M-%S}-{now.microsecond // 1000:03d}"


def job_dir_name(overrides: str, max_length: int = 80) -> str:
    """A sweep job's directory name from its overrides (Hydra's ``override_dirname``): as it is when short, else a
    readable prefix plus a hash of the whole, so no name exceeds ``max_length`` (file systems allow 255 bytes). The
    full overrides stay in the job's ``.hydra/overrides.yaml`` and ``config.yaml``."""
    name = overrides.replace("/", "_")
    if len(name) <= max_length:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: max_length - len(digest) - 1]}-{digest}"


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
BUILDING_BLOCKS = ("recipe",)  # groups that configs include, not choices for the command line


def help_groups() -> str:
    """``group: option, ...`` for every config group a user chooses from (``train.py --help``): the building
    blocks that experiments include (``recipe``) are left out."""
    lines = []
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options and group not in BUILDING_BLOCKS:
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)


def register_configs() -> None:
    """Register the schema (``train_schema``, first in ``train.yaml``'s defaults) and the resolvers the configs use:
    ``run_id`` (the run directory name), ``job_dir_name`` (a sweep job's directory), ``help_groups`` (the groups
    ``--help`` lists), ``rank_zero`` (a value on rank 0, null elsewhere), ``config_record_dir`` (Hydra's
    ``output_subdir``), ``log_file_name``."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    OmegaConf.register_new_resolver("run_id", run_id, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("job_dir_name", job_dir_name, replace=True)
    OmegaConf.register_new_resolver("help_groups", help_groups, replace=True)
    OmegaConf.register_new_resolver("rank_zero", lambda value: value if _rank() == 0 else None, replace=True)
    OmegaConf.register_new_resolver("config_record_dir", config_record_dir, replace=True)
    OmegaConf.register_new_resolver(
        "log_file_name", lambda job: f"{job}.log" if _rank() == 0 else f"{job}_rank{_rank()}.log", replace=True
    )
