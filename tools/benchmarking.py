"""Benchmark models: params, MACs, inference/training throughput, latency and peak memory, with a reference model.

For every model and resolution it reports:

- ``params_m``: parameters (millions), ``sum(p.numel())``. Weights a model keeps frozen as buffers (RandFormer's
  ``random_matrix``: persistent floating-point buffers outside normalisation layers) are not parameters and are left
  out; the row's ``note`` says how many millions (``frozen_weights``);
- ``gmacs``: forward MACs of one image (GMACs = FLOPs / 2, as timm and the papers report) from
  ``torch.utils.flop_counter.FlopCounterMode`` run on the *meta* device (nothing is allocated), split into
  ``gmacs_matmul`` (matmul/conv/attention, torch's own formulas), ``gmacs_fft`` and ``gmacs_scan`` (our rules below),
  so a mixer whose work is in an FFT or a scan is never silently counted as zero;
- ``infer_img_s``: inference throughput at batch ``batch`` (eval mode, ``torch.inference_mode``);
- ``latency_ms``: batch-1 inference latency;
- ``train_img_s``: training-step throughput (forward + cross-entropy + backward + AdamW step) at batch ``batch``;
- ``peak_mem_mb``: CUDA ``max_memory_allocated``; on CPU the peak RSS of the fresh subprocess that measured the model,
  minus its RSS after ``import torch, timm, models`` (so: weights, activations, gradients and optimizer state);
- ``*_rel``: each timing divided by the same timing of the reference model (default timm's ``poolformerv2_s12``)
  measured in the same run at the same resolution and batch, so tables from noisy machines compare
  (``infer_rel``/``train_rel`` > 1: faster than the reference; ``latency_rel`` < 1: faster).

Every timing is the median of ``--runs`` timed runs after ``--warmup`` untimed ones.

MAC rules (FlopCounterMode counts only matmul/conv/attention; elementwise ops, pooling and norms count 0 here, as
in the papers' tables). With ``n`` the number of points transformed (product of the transformed sizes; for a
real<->complex pair, the real size) and ``batch`` the number of independent transforms:

- complex FFT (``aten._fft_c2c``): 5·n·log2(n) real FLOPs per transform (radix-2 Cooley-Tukey) = 2.5·n·log2(n) MACs;
- real FFT (``aten._fft_r2c``, inverse ``aten._fft_c2r``): half of that, 1.25·n·log2(n) MACs per transform;
- scans (``aten.cumsum``/``cumprod``/``logcumsumexp``): one multiply-add per output element;
- fused scan kernels whose work no aten op shows (e.g. a CUDA selective scan): a module that defines
  ``scan_macs(*inputs) -> int`` has that number added to ``gmacs_scan`` (the zoo's S6 declares B·L·D·N, one
  multiply-add per state update; its C·h readout is a matmul already; such a module must not also run the scan
  through the ops above).

Models (positional arguments; globs allowed):

- a timm name (``poolformerv2_s12``, ``resnet50``), zoo names included (``import mixerzoo`` registers them:
  ``randformer_s12``, ``affnet_t``, ...); ``timm:<name>`` forces timm;
- ``config:<name>`` for a zoo model config ``configs/model/<name>.yaml`` (``config:caformer_s18``), with Hydra
  overrides of the model group after ``@``: ``config:metaformer_s12@mixer=attention``,
  ``config:metaformer_s12@mixer={name:aff,inner_skip:true}@block.mlp.ratio=3``;
  ``config:*former_s12`` globs config names.

Grid-bound models (e.g. the ``random`` mixer, whose frozen mixing matrix fits one token grid) are built once at
``--build-size`` (default 224) and fed every resolution: where they cannot run, the row says ``n/a`` and why.
``--rebuild-per-resolution`` builds every model with ``img_size`` = the resolution instead (for ``random`` that draws a
new random matrix per resolution). Models whose forward exceeds ``--max-gmacs`` per image are not timed (n/a, with the
MAC count that would be needed), which keeps the quadratic mixers from taking hours on a CPU.

Examples::

    python benchmark.py poolformerv2_s12 config:poolformerv2_s12 --img-size 224 448
    python benchmark.py --preset mixers                  # every registered mixer in metaformer_s12 at 224/448/896
    python benchmark.py --preset channel-mixers          # every channel mixer in its MLP slot (pooling mixer)
    python benchmark.py --preset zoo-vs-timm             # zoo PoolFormerV2-S12/ConvFormer-S18/CAFormer-S18 vs timm
    python benchmark.py --preset mixers --macs-only      # just params and MACs (seconds)
    python benchmark.py --preset mixers --device cuda --batch-size 128 --precision amp_bf16 --warmup 10 --runs 30
    python benchmark.py 'config:*former_s12' --thorough --threads 2 --csv results.csv

The batch shrinks with the resolution so every run sees the same number of pixels: ``batch = max(1,
round(B·(224/size)²))`` for ``--batch-size B`` (``--fixed-batch`` turns that off). The Markdown table goes to stdout,
the CSV to ``--csv`` (default ``outputs/benchmark/benchmark_<time>.csv``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fnmatch
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import mixerzoo  # noqa: F401  (registers the zoo in timm)
from mixerzoo.mixers import list_channel_mixers, list_mixers
from mixerzoo.mixers.grid import GridMismatchError
from mixerzoo.models import build_model as build_model_from_spec
from mixerzoo.models import list_layouts
from mixerzoo.models.factory import is_zoo_model
from mixerzoo.models.macs import count_macs
from mixerzoo.registry import did_you_mean
from mixerzoo.training.data import usable_cpus
from mixerzoo.training.errors import user_errors

ROOT = Path(__file__).resolve().parents[1]  # the repository (benchmark.py, the script, is there)
DEFAULT_REFERENCE = "poolformerv2_s12"
BASE_SIZE = 224

COLUMNS = [
    "model",
    "img_size",
    "batch",
    "params_m",
    "gmacs",
    "gmacs_matmul",
    "gmacs_fft",
    "gmacs_scan",
    "infer_img_s",
    "infer_rel",
    "latency_ms",
    "latency_rel",
    "train_img_s",
    "train_rel",
    "peak_mem_mb",
    "note",
]
TIMING_COLUMNS = ["infer_img_s", "latency_ms", "train_img_s"]
RATIO_OF = {"infer_rel": "infer_img_s", "latency_rel": "latency_ms", "train_rel": "train_img_s"}
PRECISIONS = ("fp32", "bf16", "fp16", "amp_bf16", "amp_fp16")


# --- model specs ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A model to benchmark: a timm name, or a zoo model (``configs/model/<name>.yaml``) plus overrides of its keys
    (``key=<yaml value>``, dotted keys into nested options: ``block.norm=layernorm``)."""

    kind: str  # "timm" or "config"
    name: str
    overrides: tuple[str, ...] = ()  # key=<yaml value>: options of the model spec (timm: create_model kwargs)

    @property
    def label(self) -> str:
        if self.kind == "timm":
            return self.name
        return "@".join([f"config:{self.name}", *self.overrides])


def model_config_names() -> list[str]:
    return list_layouts()


def parse_model_arg(arg: str) -> list[ModelSpec]:
    """``name``, ``timm:name``, ``config:name[@override...]``; ``*?[`` in the name expand to every match."""
    is_glob = any(c in arg for c in "*?[")
    if arg.startswith("config:"):
        name, *overrides = arg[len("config:") :].split("@")
        names = fnmatch.filter(model_config_names(), name) if is_glob else [name]
        if not names or (not is_glob and name not in model_config_names()):
            hint = did_you_mean(name, model_config_names())
            raise ValueError(f"No model config matches {name!r}.{hint} Configs: {', '.join(model_config_names())}.")
        return [ModelSpec("config", n, tuple(overrides)) for n in names]
    name = arg.removeprefix("timm:")
    names = timm.list_models(name) if is_glob else [name]
    unknown = [n for n in names if not timm.is_model(n)] if names else [name]
    if unknown:
        timm_names = set(timm.list_models())
        choices = timm_names | set(model_config_names())
        hint = did_you_mean(unknown[0], choices, lambda n: repr(n if n in timm_names else f"config:{n}"))
        raise ValueError(
            f"Unknown timm model {unknown[0]!r}.{hint} (A zoo model config is config:<name>; python -m mixerzoo "
            "lists both.)"
        )
    return [ModelSpec("timm", n) for n in names]


def parse_models(args: Iterable[str]) -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    for arg in args:
        specs += [s for s in parse_model_arg(arg) if s not in specs]
    return specs


def spec_options(overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` overrides in Hydra's syntax, as on train.py's command line (``mixer={name:attention,head_dim:16}``,
    ``dims=[8,16]``), as (nested) options: ``block.norm=layernorm`` -> ``{"block": {"norm": "layernorm"}}``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    options: dict[str, Any] = {}
    for text in overrides:
        if "=" not in text:
            raise ValueError(f"Override {text!r} is not key=value (e.g. mixer=attention, block.norm=layernorm).")
        override = parser.parse_override(text)
        *parents, leaf = override.key_or_group.removeprefix("model.").split(".")
        node = options
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = override.value()
    return options


def build_model(spec: ModelSpec, img_size: int | None = None, num_classes: int = 1000) -> tuple[nn.Module, str]:
    """The model (on the current default device) and a note, through the zoo's one build function; zoo models are
    built for ``img_size`` if given (grid-bound mixers depend on it), other timm models at their default."""
    data = {"num_classes": num_classes, "in_chans": 3, "img_size": img_size}
    source = "timm" if spec.kind == "timm" else "zoo"  # timm:caformer_s18 is timm's model, config:caformer_s18 ours
    model = build_model_from_spec({"name": spec.name, "source": source, **spec_options(spec.overrides)}, data)
    zoo = is_zoo_model(spec.name) if source == "zoo" else type(model).__module__.startswith("mixerzoo.")
    note = f"built for {img_size}" if img_size is not None and zoo else ""
    return model, note


# --- timing -----------------------------------------------------------------------------------------------------
@dataclass
class RunOptions:
    """How to measure (shared by every model of a run)."""

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    threads: int | None = None
    warmup: int = 1
    runs: int = 3
    num_classes: int = 1000
    skip_train: bool = False
    skip_latency: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(step: Callable[[], Any], device: torch.device, warmup: int, runs: int) -> float:
    """Median seconds of ``runs`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(spec: ModelSpec, img_size: int, build_size: int | None, batch: int, opts: RunOptions) -> dict[str, Any]:
    """Time one model in this process: inference throughput, batch-1 latency, training step, peak memory."""
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = torch.device(opts.device)
    baseline_rss = _current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model, _ = build_model(spec, build_size, opts.num_classes)
    model_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.precision, torch.float32)
    memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
    model = model.to(device=device, dtype=model_dtype, memory_format=memory_format)
    amp_dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(opts.precision)

    def autocast() -> contextlib.AbstractContextManager:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    run_model = model
    if opts.compile:
        run_model = torch.compile(model, mode=opts.compile_mode, backend=opts.compile_backend)

    def images(n: int) -> torch.Tensor:
        x = torch.randn(n, 3, img_size, img_size, device=device, dtype=model_dtype)
        return x.contiguous(memory_format=memory_format)

    result: dict[str, Any] = {}
    model.eval()
    x = images(batch)
    with torch.inference_mode(), autocast():
        seconds = _median_time(lambda: run_model(x), device, opts.warmup, opts.runs)
        result["infer_img_s"] = batch / seconds
        if not opts.skip_latency:
            x1 = images(1)
            result["latency_ms"] = 1000 * _median_time(lambda: run_model(x1), device, opts.warmup, opts.runs)
    if not opts.skip_train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        target = torch.randint(0, opts.num_classes, (batch,), device=device)
        x = images(batch)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(run_model(x), target)
            loss.backward()
            optimizer.step()

        result["train_img_s"] = batch / _median_time(train_step, device, opts.warmup, opts.runs)
    if device.type == "cuda":
        result["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        result["peak_mem_mb"] = _peak_rss_mb() - baseline_rss
    return result


def measure_in_subprocess(
    spec: ModelSpec, img_size: int, build_size: int | None, batch: int, opts: RunOptions
) -> dict[str, Any]:
    """``measure`` in a fresh Python process (so its peak RSS is this model's alone); raises on failure."""
    job = {"spec": asdict(spec), "img_size": img_size, "build_size": build_size, "batch": batch, "opts": asdict(opts)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmark.py"), "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:  # a crash the worker could not report (killed, out of memory, ...)
        error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise RuntimeError(f"worker exited with status {proc.returncode}: {error}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise (NotApplicable if result["not_applicable"] else RuntimeError)(result["error"])
    return result


class NotApplicable(Exception):
    """A size the model cannot take (a grid-bound mixer at another grid): the row is n/a, not a failure."""


def _root_cause(error: BaseException) -> BaseException:
    """The innermost exception (Hydra's InstantiationException wraps the constructor's own error)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _worker(job_json: str) -> None:
    job = json.loads(job_json)
    spec = ModelSpec(job["spec"]["kind"], job["spec"]["name"], tuple(job["spec"]["overrides"]))
    try:
        result = measure(spec, job["img_size"], job["build_size"], job["batch"], RunOptions(**job["opts"]))
    except Exception as error:  # reported to the parent, which decides n/a or failure
        root = _root_cause(error)
        result = {"error": _describe(root), "not_applicable": isinstance(root, GridMismatchError)}
    print(json.dumps(result))


# --- the run ----------------------------------------------------------------------------------------------------
@dataclass
class BenchmarkConfig:
    """What to benchmark and how."""

    models: list[ModelSpec]
    img_sizes: list[int] = field(default_factory=lambda: [BASE_SIZE])
    reference: ModelSpec | None = field(default_factory=lambda: ModelSpec("timm", DEFAULT_REFERENCE))
    batch_size: int = 8
    fixed_batch: bool = False
    build_size: int = BASE_SIZE
    rebuild_per_resolution: bool = False
    max_gmacs: float | None = 100.0
    macs_only: bool = False
    subprocess: bool = True
    opts: RunOptions = field(default_factory=RunOptions)


def batch_for(cfg: BenchmarkConfig, img_size: int) -> int:
    if cfg.fixed_batch:
        return cfg.batch_size
    return max(1, round(cfg.batch_size * (BASE_SIZE / img_size) ** 2))


def _first_line(error: BaseException, limit: int = 160) -> str:
    """The first sentence of an error message, shortened for a table cell."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error, its message whole (for the log and the failure note)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _note_for(error: BaseException) -> str:
    """``n/a: <reason>`` for a size the model cannot take, ``failed: <Type: message>`` for anything else."""
    if isinstance(error, NotApplicable):
        return f"n/a: {_first_line(error)}"
    root = _root_cause(error)
    if isinstance(root, GridMismatchError):
        return f"n/a: {_first_line(root)}"
    return f"failed: {_describe(root)}"


def failed_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if any(part.startswith("failed:") for part in str(row.get("note", "")).split("; "))]


def frozen_weights(model: nn.Module) -> tuple[int, list[str]]:
    """Elements and names of the weights ``model`` keeps frozen as buffers: persistent floating-point buffers outside
    normalisation layers (RandFormer's ``random_matrix``; running statistics are not weights). ``params_m`` leaves
    them out, as ``sum(p.numel() for p in model.parameters())`` does."""
    count, names = 0, set()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            continue
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set and buffer.is_floating_point():
                count += buffer.numel()
                names.add(name)
    return count, sorted(names)


def benchmark_one(cfg: BenchmarkConfig, spec: ModelSpec, img_size: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One row: params and MACs on the meta device, then (unless n/a) the timings."""
    build_size = img_size if cfg.rebuild_per_resolution else cfg.build_size
    batch = batch_for(cfg, img_size)
    row: dict[str, Any] = {"model": spec.label, "img_size": img_size, "batch": batch}
    notes = []
    try:
        with torch.device("meta"):
            model, build_note = build_model(spec, build_size, cfg.opts.num_classes)
            inputs = torch.empty(1, 3, img_size, img_size)
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        if build_note and cfg.rebuild_per_resolution:
            notes.append(build_note)
        frozen, buffers = frozen_weights(model)
        if frozen:
            notes.append(
                f"params_m leaves out {frozen / 1e6:.2f} M frozen weights kept as buffers ({', '.join(buffers)})"
            )
        macs = count_macs(model.eval(), inputs)
    except Exception as error:  # n/a (a size the model cannot take) or a failure, with the real error
        row["note"] = _note_for(error)
        log(f"  {spec.label} @ {img_size}: {row['note']}")
        return row
    row.update(gmacs=macs.total / 1e9, gmacs_matmul=macs.matmul / 1e9, gmacs_fft=macs.fft / 1e9)
    row["gmacs_scan"] = macs.scan / 1e9
    if cfg.macs_only:
        row["note"] = "; ".join(notes)
        return row
    if cfg.max_gmacs is not None and row["gmacs"] > cfg.max_gmacs:
        notes.append(f"not timed: {row['gmacs']:.0f} GMACs/image > --max-gmacs {cfg.max_gmacs:g}")
        row["note"] = "; ".join(notes)
        log(f"  {spec.label} @ {img_size}: {row['note']}")
        return row
    start = time.perf_counter()
    try:
        if cfg.subprocess:
            row.update(measure_in_subprocess(spec, img_size, build_size, batch, cfg.opts))
        else:
            row.update(measure(spec, img_size, build_size, batch, cfg.opts))
            if cfg.opts.device == "cpu":
                row.pop("peak_mem_mb")  # the RSS of a shared process says nothing about this model
    except Exception as error:
        notes.append(_note_for(error))
    row["note"] = "; ".join(notes)
    log(f"  {spec.label} @ {img_size}: {time.perf_counter() - start:.1f}s {_short(row)}")
    return row


def _short(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(k, row.get(k))}" for k in ("gmacs", *TIMING_COLUMNS) if row.get(k) is not None)


def run_benchmark(cfg: BenchmarkConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every model at every size, the reference first at each size; timings get ratios to the reference's."""
    rows = []
    for img_size in cfg.img_sizes:
        log(f"img_size {img_size} (batch {batch_for(cfg, img_size)})")
        reference_row = None
        specs = list(cfg.models)
        if cfg.reference is not None:
            specs = [cfg.reference] + [s for s in specs if s != cfg.reference]
        for spec in specs:
            row = benchmark_one(cfg, spec, img_size, log)
            if cfg.reference is not None and spec == cfg.reference:
                reference_row = row
                row["note"] = "; ".join(filter(None, ["reference", row.get("note", "")]))
            rows.append(row)
        for row in rows[-len(specs) :]:
            for ratio, column in RATIO_OF.items():
                value = row.get(column)
                reference = reference_row.get(column) if reference_row else None
                if value is not None and reference:
                    row[ratio] = value / reference
    return rows


# --- output -----------------------------------------------------------------------------------------------------
DECIMALS = {"params_m": 2, "infer_img_s": 1, "latency_ms": 1, "train_img_s": 1, "peak_mem_mb": 0}


def format_value(column: str, value: Any) -> str:
    if value is None or value == "":
        return "n/a" if column in COLUMNS[3:-1] else ""
    if isinstance(value, float):
        if column.startswith("gmacs"):
            return f"{value:.1e}" if 0 < value < 1e-3 else f"{value:.3f}" if value < 10 else f"{value:.1f}"
        return f"{value:.{DECIMALS.get(column, 2)}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(c, row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in COLUMNS})
    return path


# --- presets and CLI --------------------------------------------------------------------------------------------
PRESETS = ("mixers", "channel-mixers", "zoo-vs-timm")


def preset(name: str) -> tuple[list[str], list[int]]:
    """Models and sizes of a preset. ``mixers``: every registered token mixer (``list_mixers()``, so new mixers join
    by registering) in the comparison backbone ``metaformer_s12`` (the PoolFormerV2-S12 layout);
    ``channel-mixers``: every registered channel mixer in the same backbone's MLP slot, with its pooling mixer."""
    if name == "mixers":
        return [f"config:metaformer_s12@mixer={m}" for m in list_mixers()], [224, 448, 896]
    if name == "channel-mixers":
        return [f"config:metaformer_s12@block.mlp={m}" for m in list_channel_mixers()], [224, 448, 896]
    if name == "zoo-vs-timm":
        pairs = ["poolformerv2_s12", "convformer_s18", "caformer_s18"]
        return [m for p in pairs for m in (f"config:{p}", p)], [224]
    raise ValueError(f"Unknown preset {name!r}; presets: {', '.join(PRESETS)}.")


def training_memory(
    model: nn.Module, img_size: int, batches: Sequence[int] = (1, 2), amp_dtype: torch.dtype | None = None
) -> dict[str, float]:
    """Peak bytes of live tensors during one training step (forward, cross-entropy, backward, AdamW step) at each of
    ``batches`` (images of ``img_size``² on the model's device), counted the same way on CPU and CUDA: torch's
    ``MemTracker`` (``torch.distributed._tools.mem_tracker``) adds up the storages of every tensor alive, not an
    allocator's reservations. A first untimed step allocates gradients and the optimizer state, so each peak is
    the steady state of a training loop. Returns ``peak_mb_b<n>`` per batch and, from the first and last batch,
    ``mb_per_image`` (the slope: activations kept for the backward and their transients) and ``fixed_mb`` (weights,
    gradients, optimizer state): ``fixed_mb + batch * mb_per_image`` extrapolates to a batch too large to run here.
    Kernel-internal workspaces that never leave an op (a scan's per-chunk buffers) are not seen."""
    from torch.distributed._tools.mem_tracker import MemTracker

    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    def step(batch: int) -> None:
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        target = torch.zeros(batch, dtype=torch.long, device=device)
        with autocast:
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    step(batches[0])
    peaks = {}
    for batch in batches:
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            step(batch)
        peaks[batch] = tracker.get_tracker_snapshot("peak")[device]["Total"] / 2**20
    first, last = batches[0], batches[-1]
    per_image = (peaks[last] - peaks[first]) / (last - first) if last != first else peaks[first] / first
    result = {f"peak_mb_b{b}": peak for b, peak in peaks.items()}
    return result | {"mb_per_image": per_image, "fixed_mb": peaks[first] - first * per_image}


def memory_table(cfg: BenchmarkConfig, batches: Sequence[int]) -> list[dict[str, Any]]:
    """``training_memory`` of every model at every size of ``cfg``, printed as a Markdown table."""
    amp_dtype = {"amp_bf16": torch.bfloat16, "amp_fp16": torch.float16}.get(cfg.opts.precision)
    rows = []
    for spec in cfg.models:
        for size in cfg.img_sizes:
            model, _ = build_model(spec, size)
            memory = training_memory(model.to(cfg.opts.device), size, batches, amp_dtype)
            rows.append({"model": spec.label, "img_size": size, **{k: round(v, 1) for k, v in memory.items()}})
    columns = list(rows[0]) if rows else []
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", help="timm names, timm:<name>, config:<name>[@override...]; globs")
    parser.add_argument("--preset", choices=PRESETS, help="a predefined set of models and sizes")
    parser.add_argument("--img-size", type=int, nargs="+", help="input resolutions (default 224, or the preset's)")
    parser.add_argument("--reference", default=DEFAULT_REFERENCE, help="reference model ('none' for no ratios)")
    parser.add_argument("--batch-size", type=int, help="batch at 224 (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--fixed-batch", action="store_true", help="same batch at every size (default: scale by 1/px)")
    parser.add_argument("--build-size", type=int, default=BASE_SIZE, help="img_size models are built with")
    parser.add_argument("--rebuild-per-resolution", action="store_true", help="build with img_size = each resolution")
    parser.add_argument("--max-gmacs", type=float, help="skip timing above this many GMACs/image (CPU default 100)")
    parser.add_argument("--macs-only", action="store_true", help="params and MACs only, no timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="model dtype, or autocast (amp_*)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up compiles)")
    parser.add_argument("--compile-mode", help="torch.compile mode (default, reduce-overhead, max-autotune)")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads in each measuring process (CPU default: the idle cores)"
    )
    parser.add_argument("--warmup", type=int, help="untimed runs (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--runs", type=int, help="timed runs, median reported (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--thorough", action="store_true", help="--warmup 5 --runs 15 unless given")
    parser.add_argument("--no-train", action="store_true", help="skip the training-step timing")
    parser.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency")
    parser.add_argument("--in-process", action="store_true", help="measure in this process (no CPU peak memory)")
    parser.add_argument(
        "--train-memory",
        type=int,
        nargs="+",
        metavar="BATCH",
        help="instead of timing: training-step peak tensor memory at these batches (training_memory), per image",
    )
    parser.add_argument("--csv", help="CSV path (default outputs/benchmark/benchmark_<time>.csv)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def idle_cores() -> int:
    """The CPUs this process may run on less the 1-minute load average (rounded), at least 1: the thread count that
    does not oversubscribe a machine other work is using. On a loaded 2-core machine torch's default (one thread
    per core) made first forwards take 20-30 s instead of 0.1-2.4 s with one thread."""
    cpus = usable_cpus()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cpus, torch.get_num_threads(), cpus - round(load)))


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    model_args, sizes = list(args.models), args.img_size
    if args.preset:
        preset_models, preset_sizes = preset(args.preset)
        model_args, sizes = preset_models + model_args, sizes or preset_sizes
    if not model_args:
        raise SystemExit("benchmark.py: give model names or --preset (see --help).")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"benchmark.py: --device {args.device}, but no CUDA GPU is visible here; use --device cpu.")
    thorough_warmup, thorough_runs = (5, 15) if args.thorough else (5, 20) if cuda else (1, 3)
    opts = RunOptions(
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        compile_mode=args.compile_mode,
        threads=args.threads or (None if cuda else idle_cores()),
        warmup=args.warmup if args.warmup is not None else thorough_warmup,
        runs=args.runs if args.runs is not None else thorough_runs,
        skip_train=args.no_train,
        skip_latency=args.no_latency,
    )
    reference = None if args.reference.lower() == "none" else parse_model_arg(args.reference)[0]
    return BenchmarkConfig(
        models=parse_models(model_args),
        img_sizes=sizes or [BASE_SIZE],
        reference=reference,
        batch_size=args.batch_size or (64 if cuda else 8),
        fixed_batch=args.fixed_batch,
        build_size=args.build_size,
        rebuild_per_resolution=args.rebuild_per_resolution,
        max_gmacs=args.max_gmacs if args.max_gmacs is not None else (None if cuda else 100.0),
        macs_only=args.macs_only,
        subprocess=not args.in_process,
        opts=opts,
    )


def describe(cfg: BenchmarkConfig) -> str:
    o = cfg.opts
    threads = o.threads or torch.get_num_threads()
    return (
        f"device {o.device}, {o.precision}, channels_last={o.channels_last}, compile={o.compile}, threads {threads}, "
        f"warmup {o.warmup}, runs {o.runs} (median), reference {cfg.reference.label if cfg.reference else 'none'}, "
        f"torch {torch.__version__}, timm {timm.__version__}"
    )


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return []
    with user_errors("benchmark.py", debug=args.debug):
        cfg = config_from_args(args)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    log(describe(cfg))
    if args.train_memory:
        return memory_table(cfg, args.train_memory)
    rows = run_benchmark(cfg, log)
    columns = COLUMNS
    if cfg.macs_only:
        columns = [c for c in COLUMNS if c not in (*TIMING_COLUMNS, *RATIO_OF, "peak_mem_mb", "batch")]
    print(f"<!-- {describe(cfg)} -->")
    print(markdown_table(rows, columns))
    csv_path = args.csv or ROOT / "outputs" / "benchmark" / f"benchmark_{time.strftime('%Y%m%d_%H%M%S')}.csv"
    log(f"CSV: {write_csv(rows, csv_path)}")
    for row in failed_rows(rows):
        log(f"FAILED {row['model']} @ {row['img_size']}: {row['note']}")
    return rows
