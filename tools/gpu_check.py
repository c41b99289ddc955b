"""The GPU check: what a first GPU must show, in two parts of at most 8 minutes each on one H100/H200, as one table
(printed as Markdown, written as Markdown, JSON and CSV under ``--out``).

On a machine with only ``python3``, torch, timm and pytest (no network, no install of this package), from a plain
copy of the repository, with the wheels of hydra-core, omegaconf and antlr4-python3-runtime in ``.whl/``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 tools/gpu_check.py --part 1 --out "$OUT"
    PYTHONPATH=/tmp/site python3 tools/gpu_check.py --part 2 --out "$OUT"
    python3 tools/gpu_check.py --device cpu --quick --out /tmp/check      # the same code on a CPU, tiny sizes

``import mixerzoo`` needs no install: this script links the repository (the package's root) as ``mixerzoo`` into a
temporary folder and puts that folder first on ``sys.path`` and ``PYTHONPATH``, so this process and every process it
starts (pytest, the rows) load this copy (``use_this_checkout``).

Rows, in priority order (``PLAN``; zoo/timm model names are ``configs/model`` names and timm's):

(a) ``tests``: every ``cuda`` test (``tests/test_cuda.py``: each mixer under bf16/fp16 autocast against its float32
    CPU result, the scan backends, channels_last, compile, GradScaler, DDP over NCCL, train/resume/eval);
(b) ``zoo_vs_timm``: training throughput of the zoo's PoolFormerV2-S12 and CAFormer-S18 against timm's same
    architecture, both models in one process, timed in alternating rounds; eager, then ``torch.compile``d (with each
    model's compile seconds and graph breaks);
(c) ``selective_scan`` (the S6 scan alone at ViM2-T stage 1's size, each backend the device runs) and
    ``throughput``: training images/s of vim2_t with the torch and the Triton scan, and of hydra_vit_s;
(d) ``train``: ``train.py`` on fake data at 224²: one epoch, ``resume=auto`` to a second, then ``eval_only`` of the
    result (eager, then compiled);
(e) ``memory``: one training step of vim2_t/s/b at batch 128: peak CUDA memory, or out-of-memory.

Time: each row is allotted seconds (``PLAN``, estimates for one H100); the part's budget is their sum. A row may use
what earlier rows left over, never the time allotted to the rows after it (``row_timeout``), so every row is reached
and the part ends within its budget. Every row runs in its own subprocess (a crash, an out-of-memory or a hung
compile costs that row only; a row past its time is killed with everything it started). Bf16 autocast and
channels_last on CUDA; float32 and a trace-only compile (``backend="eager"``) with ``--quick``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def use_this_checkout() -> None:
    """Make ``import mixerzoo`` load this repository, here and in every subprocess, without an install.

    The package's root is the repository folder, whose name is not ``mixerzoo``: putting the repository's parent
    on the path does not work. A temporary folder holding one link, ``mixerzoo -> ROOT``, does; it goes first on
    ``sys.path`` and ``PYTHONPATH`` (so it also wins over another checkout installed in editable mode) and is
    removed at exit. Nothing is done where ``mixerzoo`` already resolves to this repository."""
    spec = importlib.util.find_spec("mixerzoo")
    if spec is not None and spec.origin and Path(spec.origin).resolve() == ROOT / "__init__.py":
        return
    folder = Path(tempfile.mkdtemp(prefix="mixerzoo_path_"))
    (folder / "mixerzoo").symlink_to(ROOT, target_is_directory=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    importlib.invalidate_caches()


@dataclass
class Settings:
    """Sizes for a GPU (the papers' per-GPU batch) or, with ``--quick``, tiny ones that run in seconds on a CPU."""

    device: str
    quick: bool
    img_size: int = 224
    batch_size: int = 128  # zoo_vs_timm, train, memory
    throughput_batch: int = 64  # (c): vim2_t and hydra_vit_s, well inside memory whatever the scan keeps
    precision: str = "bf16"
    compile_backend: str = "inductor"
    warmup_steps: int = 3  # the first compiles
    rounds: int = 5  # zoo_vs_timm: rounds of (zoo, timm); throughput: rounds of one model
    steps_per_round: int = 5
    train_steps: int = 8  # per epoch
    val_images: int = 512
    num_workers: int = 8
    scan_size: str = "vim2_t stage 1"
    scan_runs: int = 10
    memory_scan: str | None = None  # (e): the models' own scan backend; on a CPU the torch scan (see for_device)

    @classmethod
    def for_device(cls, device: str, quick: bool) -> Settings:
        if not quick:
            return cls(device, quick)
        # float32 on a CPU: bf16 autocast is emulated (slow) on CPUs without bf16 instructions
        tiny = dict(img_size=32, batch_size=4, throughput_batch=4, warmup_steps=1, rounds=2, steps_per_round=1)
        tiny |= dict(train_steps=2, val_images=8, num_workers=0, scan_size="tiny", scan_runs=2)
        # the models' own backend on a CPU is the inductor-compiled chunk step: ~30 s of C++ compile per model, for a
        # row whose figure (a CPU's peak RSS) means nothing; the torch scan runs the same step in a second
        tiny |= dict(memory_scan="torch")
        return cls(device, quick, precision="fp32", compile_backend="eager", **tiny)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


# (part, check, name, mode, keyword arguments, seconds allotted on one H100), in priority order
PLAN: list[tuple[int, str, str, str, dict[str, Any], float]] = [
    (1, "tests", "tests/test_cuda.py", "-m cuda", {}, 140),
    (1, "zoo_vs_timm", "poolformerv2_s12", "eager", {"arch": "poolformerv2_s12", "compiled": False}, 30),
    (1, "zoo_vs_timm", "caformer_s18", "eager", {"arch": "caformer_s18", "compiled": False}, 35),
    (1, "zoo_vs_timm", "poolformerv2_s12", "compiled", {"arch": "poolformerv2_s12", "compiled": True}, 85),
    (1, "zoo_vs_timm", "caformer_s18", "compiled", {"arch": "caformer_s18", "compiled": True}, 100),
    (2, "selective_scan", "S6 scan", "fwd, fwd+bwd", {}, 25),
    (2, "throughput", "vim2_t", "scan torch", {"model": "vim2_t", "scan": "torch"}, 40),
    (2, "throughput", "vim2_t", "scan triton", {"model": "vim2_t", "scan": "triton"}, 45),
    (2, "throughput", "hydra_vit_s", "eager", {"model": "hydra_vit_s", "scan": None}, 30),
    (2, "train", "poolformerv2_s12", "eager", {"model": "poolformerv2_s12", "compiled": False}, 55),
    (2, "train", "poolformerv2_s12", "compiled", {"model": "poolformerv2_s12", "compiled": True}, 80),
    (2, "memory", "vim2_t", "1 training step", {"model": "vim2_t"}, 20),
    (2, "memory", "vim2_s", "1 training step", {"model": "vim2_s"}, 20),
    (2, "memory", "vim2_b", "1 training step", {"model": "vim2_b"}, 20),
]
OVERHEAD_S = 10  # per part: this process's start, the environment, the table
NEEDS_CUDA = {"triton"}  # scans a CPU cannot run (Triton's kernels; its interpreter is for the kernel tests)


def part_budget(part: int) -> float:
    return sum(allot for p, *_, allot in PLAN if p == part) + OVERHEAD_S


@dataclass
class Row:
    part: int
    check: str
    name: str
    mode: str
    allotted: float
    status: str = "ok"
    values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --- what the rows share -------------------------------------------------------------------------------------------
def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vim2_kwargs(model: str, scan: str | None) -> dict[str, Any]:
    """timm.create_model keywords that give every S6 scan of a ViM2 model (token and channel mixers) ``scan``."""
    if scan is None:
        return {}
    from mixerzoo.models import vim2_family

    blocks = vim2_family.SIZES[model]["block"]
    return {
        "mixer": {**vim2_family.LAYOUT["mixer"], "backend": scan},
        "block": [{**b, "mlp": {**b["mlp"], "backend": scan}} for b in blocks],
    }


def _training_step(s: Settings, model: Any, batch: int, compiled: bool) -> Callable[[], None]:
    """One AdamW training step of ``model`` (moved to the device, channels_last) on a fixed synthetic batch, under
    the settings' autocast, compiled as ``train.py`` compiles (``torch.compile(model)``) when asked."""
    import torch
    import torch.nn.functional as F

    device = torch.device(s.device)
    torch.backends.cudnn.benchmark = True  # as train.py on CUDA (and timm's benchmark)
    model = model.to(device, memory_format=torch.channels_last).train()
    run = torch.compile(model, backend=s.compile_backend) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, s.img_size, s.img_size, device=device, generator=gen)
    x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, model.num_classes, (batch,), device=device, generator=gen)
    amp = s.precision in ("bf16", "fp16")
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float16

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype) if amp else contextlib.nullcontext():
            loss = F.cross_entropy(run(x), target)
        loss.backward()
        optimizer.step()

    return step


def _seconds(step: Callable[[], None], device: Any, count: int) -> float:
    """Seconds per call of ``step``, over ``count`` calls (the device synchronised before and after)."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / count


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def _peak_memory_gib(device: Any) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: the process's peak RSS


# --- the checks (each returns the row's values; an exception marks the row failed) --------------------------------
def count_outcomes(text: str) -> dict[str, int]:
    """How many tests passed, failed, were skipped or errored, from pytest's ``-v`` lines (a partial log too)."""
    outcomes = re.findall(r"^tests/test_cuda\.py::\S+ (PASSED|FAILED|SKIPPED|ERROR)", text, flags=re.MULTILINE)
    return {k.lower(): outcomes.count(k) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}


def check_tests(s: Settings, log: str) -> dict[str, Any]:
    """Every ``cuda`` test (the slow ones too); their output streams to ``log`` (kept if the row is killed)."""
    log = Path(log)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    text = log.read_text()
    counts = count_outcomes(text)
    if proc.returncode not in (0, 5) or not any(counts.values()):  # 5: nothing collected
        failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.MULTILINE)
        summary = (text.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"{summary}; " + "; ".join(failed[:5]))
    return counts


def check_zoo_vs_timm(s: Settings, arch: str, compiled: bool) -> dict[str, Any]:
    """Training images/s of the zoo's ``arch`` (its model config) and timm's, both built in this process and timed
    in alternating rounds (zoo, timm, zoo, timm, ...: drift hits both); the median round of each."""
    import statistics

    import timm
    import torch

    from mixerzoo.models import build_model

    device = torch.device(s.device)
    steps, values = {}, {}
    for key, build in (("zoo", build_model), ("timm", timm.create_model)):
        torch.manual_seed(0)
        steps[key] = _training_step(s, build(arch), s.batch_size, compiled)
        breaks = _graph_breaks()
        values[f"{key}_first_step_s"] = round(_seconds(steps[key], device, 1), 1)  # compiles, when compiled
        if compiled:
            values[f"{key}_graph_breaks"] = _graph_breaks() - breaks
        _seconds(steps[key], device, s.warmup_steps)
    rounds: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(s.rounds):
        for key, step in steps.items():
            rounds[key].append(s.batch_size / _seconds(step, device, s.steps_per_round))
    for key, images_per_second in rounds.items():
        values[f"{key}_img_s"] = round(statistics.median(images_per_second), 1)
    values["ratio"] = round(values["zoo_img_s"] / values["timm_img_s"], 3)
    values["peak_gib"] = round(_peak_memory_gib(device), 2)
    return values


def check_selective_scan(s: Settings) -> dict[str, Any]:
    """The S6 scan alone (b 2, D 768 as 4 B/C groups, L 3136, N 16 on a GPU: ViM2-T stage 1): milliseconds per
    forward and forward+backward, the peak memory of the latter, and each backend's largest relative error against
    the torch scan, for every backend the device runs (torch; on CUDA Triton at 8/16/32 channels per program, and
    mamba_ssm's fused kernel where importable)."""
    import statistics
    from functools import partial

    import torch

    from mixerzoo.mixers.ops import selective_scan as s6

    device = torch.device(s.device)
    batch, dim, groups, length, d_state = (
        (2, 768, 4, 3136, 16) if s.scan_size == "vim2_t stage 1" else (1, 32, 4, 64, 16)
    )
    gen = torch.Generator().manual_seed(0)
    u, delta, z, weight = (torch.randn(batch, dim, length, generator=gen) for _ in range(4))
    A = -torch.rand(dim, d_state, generator=gen) * 15 - 1  # the S4D-real init's range, -1 .. -16
    B, C = (torch.randn(batch, groups, d_state, length, generator=gen) for _ in range(2))
    D, delta_bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen) - 4  # softplus: Δ ~ 0.02
    inputs = [t.to(device) for t in (u, delta, A, B, C, D, z, delta_bias)]
    weight = weight.to(device)
    scans = {"torch": partial(s6.selective_scan, backend="torch")}
    if device.type == "cuda" and s6.triton_selective_scan_available():
        from mixerzoo.mixers.ops.selective_scan_triton import selective_scan_triton

        scans |= {f"triton{block}": partial(selective_scan_triton, block_d=block) for block in (8, 16, 32)}
    if device.type == "cuda" and s6.fused_selective_scan_available():
        scans["fused"] = partial(s6.selective_scan, backend="fused")

    def milliseconds(fn: Callable[[], Any]) -> float:  # median after two warm-up calls (the first compiles Triton)
        times = [1000 * _seconds(fn, device, 1) for _ in range(2 + s.scan_runs)]
        return round(statistics.median(times[2:]), 2)

    values: dict[str, Any] = {}
    reference = None
    for name, scan in scans.items():
        leaves = [t.detach().requires_grad_(True) for t in inputs]

        def forward(scan: Any = scan) -> None:
            with torch.no_grad():
                scan(*inputs, delta_softplus=True)

        def forward_backward(scan: Any = scan, leaves: list = leaves) -> torch.Tensor:
            out = scan(*leaves, delta_softplus=True)
            out.backward(weight)
            return out

        values[f"{name}_fwd_ms"] = milliseconds(forward)
        values[f"{name}_fwdbwd_ms"] = milliseconds(forward_backward)
        for t in leaves:
            t.grad = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = [forward_backward().detach(), *(t.grad for t in leaves)]
        if device.type == "cuda":
            values[f"{name}_fwdbwd_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        if reference is None:
            reference = results
        else:
            errors = [((a - e).norm() / e.norm().clamp_min(1e-30)).item() for a, e in zip(results, reference)]
            values[f"{name}_max_rel_err"] = max(errors)
    return values


def check_throughput(s: Settings, model: str, scan: str | None) -> dict[str, Any]:
    """Training images/s of one model (eager) at ``throughput_batch``, with every S6 scan on ``scan`` if given."""
    import statistics

    import timm
    import torch

    import mixerzoo  # noqa: F401  (registers the zoo's models in timm)

    device = torch.device(s.device)
    torch.manual_seed(0)
    step = _training_step(s, timm.create_model(model, **_vim2_kwargs(model, scan)), s.throughput_batch, False)
    values = {"first_step_s": round(_seconds(step, device, 1), 1)}
    _seconds(step, device, s.warmup_steps)
    rounds = [s.throughput_batch / _seconds(step, device, s.steps_per_round) for _ in range(s.rounds)]
    values |= {"batch": s.throughput_batch, "img_s": round(statistics.median(rounds), 1)}
    values["peak_gib"] = round(_peak_memory_gib(device), 2)
    return values


def _train_overrides(s: Settings, model: str, compiled: bool) -> list[str]:
    return [
        f"model={model}",
        "runtime=gpu" if s.cuda else "runtime=cpu",
        f"runtime.device={s.device}",
        f"runtime.precision={s.precision}",
        "runtime.channels_last=true",
        f"runtime.compile={str(compiled).lower()}",
        f"runtime.compile_backend={s.compile_backend}",
        "data=fake",
        "aug=none",
        "data.crop_pct=1.0",
        f"data.img_size={s.img_size}",
        f"data.num_workers={s.num_workers}",
        f"data.fake_train_size={s.batch_size * s.train_steps}",
        f"data.fake_val_size={s.val_images}",
        f"batch_size={s.batch_size}",
        "ema.enabled=true",
        "logger.progress_bar=false",
        "sched.warmup_epochs=0",
    ]


def check_train(s: Settings, model: str, compiled: bool) -> dict[str, Any]:
    """``train.py`` on fake data, run as a user runs it: one epoch (with evaluation and EMA), ``resume=auto`` to a
    second, then ``eval_only`` of the final checkpoint, which must give the training run's last top-1 (one image may
    flip: cuDNN may choose another algorithm)."""
    import torch

    def run(output_dir: Path, *extra: str) -> float:
        overrides = [f"hydra.run.dir={output_dir}", *_train_overrides(s, model, compiled), *extra]
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"train.py {' '.join(extra)} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        result = output_dir / ("eval.json" if "eval_only=true" in extra else "summary.json")
        return json.loads(result.read_text())["top1" if "eval_only=true" in extra else "best_top1"]

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.time()
        run(out, "epochs=1")
        first = json.loads((out / "summary.json").read_text())
        run(out, "epochs=2", "resume=auto")
        summary = json.loads((out / "summary.json").read_text())
        ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        eval_top1 = run(out / "eval", "eval_only=true", f"resume={out / 'last.pth'}")
    finite = all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    resumed = summary["epochs_completed"] == 2 and ckpt["global_step"] == 2 * s.train_steps
    evaluated = abs(eval_top1 - summary["final_top1_model"]) <= 100 / s.val_images + 1e-6
    if not (finite and resumed and evaluated):
        raise RuntimeError(
            f"finite weights: {finite}; resumed to epoch 2 at step {ckpt['global_step']}: {resumed}; eval_only top-1 "
            f"{eval_top1} vs the run's {summary['final_top1_model']}: {evaluated}"
        )
    return {
        "train_img_s": round(first["train_images_per_sec"], 1),
        "resume_ok": resumed,
        "eval_ok": evaluated,
        "wall_s": round(time.time() - start, 1),
    }


def check_memory(s: Settings, model: str) -> dict[str, Any]:
    """Peak memory of one training step at ``batch_size`` (weights, AdamW state, activations): CUDA's
    ``max_memory_allocated`` (on a CPU the process's peak RSS), or the out-of-memory error's report."""
    import timm
    import torch

    import mixerzoo  # noqa: F401  (registers the zoo's models in timm)

    device = torch.device(s.device)
    torch.manual_seed(0)
    values: dict[str, Any] = {"batch": s.batch_size}
    try:
        step = _training_step(s, timm.create_model(model, **_vim2_kwargs(model, s.memory_scan)), s.batch_size, False)
        values["step_s"] = round(_seconds(step, device, 1), 2)
        values["oom"] = False
    except torch.OutOfMemoryError as error:  # a result: this batch does not fit this device
        values["oom"] = True
        values["error"] = str(error).splitlines()[0][:160]
    peak = _peak_memory_gib(device)
    values["peak_gib"] = round(peak, 2)
    if device.type == "cuda":
        values["peak_mib_per_image"] = round(peak * 1024 / s.batch_size, 1)
    return values


CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "tests": check_tests,
    "zoo_vs_timm": check_zoo_vs_timm,
    "selective_scan": check_selective_scan,
    "throughput": check_throughput,
    "train": check_train,
    "memory": check_memory,
}


# --- orchestration --------------------------------------------------------------------------------------------------
def planned_rows(parts: list[int], only: list[str] | None = None) -> list[tuple[Row, dict[str, Any]]]:
    """(row, keyword arguments of its check), in the order they run."""
    return [
        (Row(part, check, name, mode, allot), dict(kwargs))
        for part, check, name, mode, kwargs, allot in PLAN
        if part in parts and (not only or check in only)
    ]


def row_timeout(deadline: float, now: float, later_allotted: float) -> float:
    """Seconds a row may run: what is left before the deadline, less what the rows after it are allotted."""
    return deadline - now - later_allotted


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the row's process and everything it started (its own session: loader workers, compile workers)."""
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_row(row: Row, kwargs: dict[str, Any], s: Settings, timeout: float, log: Path) -> None:
    """Run one row's check in a subprocess (``--worker``); its output's tail goes to ``log``."""
    start = time.time()
    if row.check == "tests":
        kwargs = {**kwargs, "log": str(log)}
    job = json.dumps({"check": row.check, "kwargs": kwargs, "settings": asdict(s)})
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--worker", job],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        row.status = f"timeout after {timeout:.0f} s"
        if row.check == "tests":  # what ran before the kill
            row.values = count_outcomes(log.read_text())
    else:
        lines = stdout.strip().splitlines()
        if proc.returncode == 0 and lines and lines[-1].startswith("{"):
            row.values = json.loads(lines[-1])
        else:
            error = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            row.status = f"failed: {error[:240]}"
    row.seconds = round(time.time() - start, 1)
    with open(log, "a") as f:
        f.write(f"\n=== {row.check} {row.name} {row.mode}: {row.status} ({row.seconds} s)\n")
        f.write("\n".join((stdout + stderr).splitlines()[-80:]) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        "| part | check | name | mode | status | results | s (allotted) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        results = ", ".join(f"{k} {_cell(v)}" for k, v in r.values.items())
        seconds = f"{r.seconds:.0f} ({r.allotted:.0f})"
        lines.append(f"| {r.part} | {r.check} | {r.name} | {r.mode} | {r.status} | {results} | {seconds} |")
    return "\n".join(lines)


def environment(s: Settings) -> dict[str, Any]:
    import platform

    import timm
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}
    env["triton"] = getattr(importlib.import_module("triton"), "__version__", "?") if _has("triton") else None
    env["mamba_ssm"] = _has("mamba_ssm")
    env["device"] = torch.cuda.get_device_name(s.device) if s.cuda else f"CPU ({os.cpu_count()} cores)"
    env["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return env


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a trace-only compile (a CPU: minutes)")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all", help="part 1: (a)-(b), part 2: (c)-(e)")
    parser.add_argument("--budget", type=float, help="seconds for the run (default: the parts' allotted time)")
    parser.add_argument("--out", type=Path, help="folder for the table, its JSON and CSV, and the log")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run only these checks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    use_this_checkout()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(CHECKS[job["check"]](Settings(**job["settings"]), **job["kwargs"]), default=str))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible here; use --device cpu --quick")
    if args.device == "cpu" and not args.quick:
        parser.error("--device cpu runs the check at --quick sizes only (the GPU sizes take hours on a CPU)")
    s = Settings.for_device(args.device, args.quick)
    parts = [1, 2] if args.part == "all" else [int(args.part)]
    label = "all" if args.part == "all" else f"part{args.part}"
    rows = planned_rows(parts, args.only)
    # the allotments are a GPU's; a CPU (--quick) gets an hour, whatever its speed
    budget = args.budget or (sum(part_budget(p) for p in parts) if s.cuda else 3600.0)
    out = args.out or ROOT / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"gpu_check_{label}.log"
    log.write_text("")
    env = environment(s)
    header = (
        f"gpu_check {label}: {env['device']} | torch {env['torch']}, timm {env['timm']}, triton {env['triton']}"
        f" | {s.precision}, channels_last, batch {s.batch_size}, {s.img_size}px | {env['date']}"
    )
    print(header, flush=True)
    deadline = time.time() + budget - OVERHEAD_S
    for i, (row, kwargs) in enumerate(rows):
        timeout = row_timeout(deadline, time.time(), sum(r.allotted for r, _ in rows[i + 1 :]))
        if timeout <= 0:
            row.status = "skipped: time budget spent"
        elif kwargs.get("scan") in NEEDS_CUDA and not s.cuda:
            row.status = "skipped: needs a CUDA device"
        else:
            run_row(row, kwargs, s, timeout, log)
        print(f"  {row.check:14} {row.name:18} {row.mode:12} {row.status} {json.dumps(row.values, default=str)}")
    table = markdown([r for r, _ in rows], header)
    print("\n" + table)
    stem = out / f"gpu_check_{label}"
    stem.with_suffix(".md").write_text(table + "\n")
    report = {"environment": env, "settings": asdict(s), "rows": [asdict(r) for r, _ in rows]}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["part", "check", "name", "mode", "status", "seconds", "allotted", "values"])
        for r, _ in rows:
            values = json.dumps(r.values, default=str)
            writer.writerow([r.part, r.check, r.name, r.mode, r.status, r.seconds, r.allotted, values])
    print(f"\nwritten: {stem}.md, .json, .csv, .log")
    return 0 if all(r.status == "ok" or r.status.startswith("skipped: needs") for r, _ in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
