"""One command that proves the GPU path: the ``cuda`` tests, short training runs, zoo-vs-timm throughput, graph
breaks and the data path, as one table (printed as Markdown, written as JSON and CSV).

    python tools/gpu_check.py                          # on a CUDA GPU: everything, within --budget (420 s)
    python tools/gpu_check.py --device cpu --quick     # the same code on a CPU, tiny sizes, well under a minute

Rows, in priority order (a row that would start after the budget is spent is reported as skipped):
1. ``tests``: ``pytest -m "cuda and not slow"`` (``--full``: with the slow compile tests).
2. ``selective_scan``: the S6 scan alone at ViM2-T stage 1's size (b 2, D 768 as 4 B/C groups, L 3136, N 16; tiny
   off CUDA): milliseconds per forward and per forward+backward, and the peak memory of the latter, of each backend
   the device runs (the torch chunked scan; on CUDA the Triton kernels at 8, 16 and 32 channels per program, and
   mamba_ssm's fused kernel where importable); each one's largest relative error against the torch scan.
3. ``train``: ``train.py`` on fake data for poolformerv2_s12, caformer_s18 and metaformer_s12 with the ``hydra`` and
   ``mamba_mixer`` mixers (bf16 autocast, channels_last, EMA): one epoch with evaluation, then ``resume=auto`` to
   a second; eager, then compiled. Columns: training images/s of the run (data loading included), top-1 (noise
   on fake data: only finiteness matters), whether the resume continued at the right step.
4. ``graph_breaks``: ``torch._dynamo.explain`` of each model's forward (0 expected outside fused-kernel
   boundaries).
5. ``throughput``: training and inference images/s of the zoo's PoolFormerV2-S12 and CAFormer-S18 (built from
   ``configs/model``) against timm's same architecture in the same process (``benchmark.measure``: synthetic
   batches already on the device), eager and compiled; the ratio zoo / timm.
6. ``loader``: images/s of the training loader alone (ours vs timm's ``create_loader``) over the same generated
   image folder, same augmentation, one warm-up epoch.

On a GPU every row runs in its own subprocess (a crash or a hung compile costs one row, not the table); with
``--quick`` rows run in this process. Needs only what the README installs (torch, timm, hydra-core, einops).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TRAIN_MODELS = {  # row name -> train.py model overrides
    "poolformerv2_s12": ["model=poolformerv2_s12"],
    "caformer_s18": ["model=caformer_s18"],
    "metaformer_s12+hydra": ["model=metaformer_s12", "model.mixer=hydra"],
    "metaformer_s12+mamba_mixer": ["model=metaformer_s12", "model.mixer=mamba_mixer"],
}
SCAN_SIZES = {  # selective_scan row: (batch, D, B/C groups, L, d_state)
    "vim2_t stage 1": (2, 768, 4, 3136, 16),  # 4 scan directions x 192 channels, 56² tokens
    "tiny": (1, 32, 4, 64, 16),  # off CUDA: the row's code path in a second
}
TIMM_PEERS = ["poolformerv2_s12", "caformer_s18"]  # zoo configs whose architecture timm also has
SHRUNK = {"depths": [1, 1, 1, 1], "dims": [32, 32, 64, 64]}  # --quick (attention heads of 32 channels divide all)


def _model_overrides(s: Settings, name: str) -> list[str]:
    """train.py's model overrides for a row (shrunk with --quick)."""
    extra = [f"model.{k}={v}".replace(" ", "") for k, v in SHRUNK.items()] if s.shrink else []
    return [*TRAIN_MODELS[name], *extra]


@dataclass
class Settings:
    """Sizes for one device; ``--quick`` shrinks everything to seconds on a CPU."""

    device: str
    quick: bool
    img_size: int
    batch_size: int
    train_steps: int
    val_images: int
    num_workers: int
    precision: str = "bf16"
    compile_backend: str = "inductor"
    timing_runs: int = 10
    loader_images: int = 2048
    shrink: bool = False  # --quick: every model at depth 1 per stage and small widths (same code paths)

    @classmethod
    def for_device(cls, device: str, quick: bool) -> Settings:
        if quick:  # float32 on a CPU: bf16 autocast is emulated (slow) on CPUs without bf16 instructions
            return cls(device, True, 32, 8, 2, 16, 0, "fp32", "eager", timing_runs=2, loader_images=64, shrink=True)
        if device == "cpu":
            return cls(device, False, 64, 16, 4, 64, 2, "fp32", timing_runs=3, loader_images=256)
        return cls(device, False, 224, 128, 12, 1024, 12)


@dataclass
class Row:
    check: str
    name: str
    mode: str = ""
    status: str = "ok"
    values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# --- the checks (each returns the row's values; an exception marks the row failed) --------------------------------
def check_tests(s: Settings, full: bool) -> dict[str, Any]:
    marker = "cuda" if full else "cuda and not slow"
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", summary)}
    if proc.returncode not in (0, 5):  # 5: nothing collected
        failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"{summary}; " + "; ".join(failed[:5]))
    return {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0), "skipped": counts.get("skipped", 0)}


def _train_overrides(s: Settings, output_dir: Path, model: list[str], compiled: bool) -> list[str]:
    runtime = "runtime=gpu" if s.device.startswith("cuda") else "runtime=cpu"
    return [
        f"output_dir={output_dir}",
        *model,
        runtime,
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


def check_train(s: Settings, name: str, compiled: bool) -> dict[str, Any]:
    import torch
    from hydra import compose, initialize_config_dir

    from mixerzoo import train

    def run(output_dir: Path, *extra: str) -> float:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            overrides = _train_overrides(s, output_dir, _model_overrides(s, name), compiled)
            cfg = compose("train", overrides=[*overrides, *extra])
        return train.run(cfg)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.time()
        run(out, "epochs=1")
        first = json.loads((out / "summary.json").read_text())
        run(out, "epochs=2", "resume=auto")
        summary = json.loads((out / "summary.json").read_text())
        ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    finite = all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    resumed = summary["epochs_completed"] == 2 and ckpt["global_step"] == 2 * s.train_steps
    if not (finite and resumed):
        raise RuntimeError(f"finite weights: {finite}; resumed to epoch 2 at step {ckpt['global_step']}: {resumed}")
    values = {
        "train_img_s": first["train_images_per_sec"],
        "top1": summary["final_top1"],
        "resume_ok": resumed,
        "wall_s": round(time.time() - start, 1),
    }
    if torch.cuda.is_available():
        values["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return values


def check_graph_breaks(s: Settings, name: str) -> dict[str, Any]:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [o.replace("model=", "+model=", 1) if o.startswith("model=") else o for o in _model_overrides(s, name)]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(overrides=overrides)
    model = instantiate(cfg.model, num_classes=10).to(s.device).eval()
    x = torch.randn(2, 3, s.img_size, s.img_size, device=s.device)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
    reasons = sorted({str(b.reason).splitlines()[0][:120] for b in explanation.break_reasons})
    return {"graph_breaks": explanation.graph_break_count, "graphs": explanation.graph_count, "reasons": reasons[:3]}


def check_throughput(s: Settings, arch: str, compiled: bool) -> dict[str, Any]:
    from mixerzoo import benchmark

    opts = benchmark.RunOptions(
        device=s.device,
        precision="fp32" if s.precision == "fp32" else f"amp_{s.precision}",
        channels_last=True,
        compile=compiled,
        compile_backend=s.compile_backend,
        warmup=3 if compiled else 2,
        runs=s.timing_runs,
        skip_latency=True,
        skip_train=s.quick,  # timm's named models take no depth/width overrides: full size, inference only
    )
    zoo, peer = benchmark.ModelSpec("config", arch), benchmark.ModelSpec("timm", arch)
    rounds = 1 if compiled else 2  # zoo, timm, zoo, timm: interleaved against drift; best of each
    results: dict[str, list[dict[str, Any]]] = {"zoo": [], "timm": []}
    for _ in range(rounds):
        for key, spec in (("zoo", zoo), ("timm", peer)):
            results[key].append(benchmark.measure(spec, s.img_size, None, s.batch_size, opts))
    values: dict[str, Any] = {}
    for metric in ("infer_img_s",) if s.quick else ("train_img_s", "infer_img_s"):
        best = {k: max(r[metric] for r in v) for k, v in results.items()}
        values[f"zoo_{metric}"], values[f"timm_{metric}"] = round(best["zoo"], 1), round(best["timm"], 1)
        values[f"{metric.split('_')[0]}_ratio"] = round(best["zoo"] / best["timm"], 3)
    return values


def check_selective_scan(s: Settings, size: str) -> dict[str, Any]:
    import statistics
    from functools import partial

    import torch

    from mixerzoo.mixers.ops import selective_scan as s6

    device = torch.device(s.device)
    batch, dim, groups, length, d_state = SCAN_SIZES[size]
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

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def milliseconds(fn: Any) -> float:  # median after two warm-up calls (the first compiles Triton kernels)
        times = []
        for _ in range(2 + s.timing_runs):
            synchronize()
            start = time.perf_counter()
            fn()
            synchronize()
            times.append(time.perf_counter() - start)
        return round(1000 * statistics.median(times[2:]), 2)

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


def _image_folder(root: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    for c in range(4):  # the same class folders as train (the loader checks the splits agree)
        (root / "validation" / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "validation" / f"class{c}" / "0.jpg")


def _images_per_second(loader: Any, device: Any, epochs: int, before_epoch: Any) -> float:
    import torch

    for epoch in range(epochs):
        before_epoch(epoch)
        if epoch == epochs - 1:
            start, images = time.perf_counter(), 0
        for x, _ in loader:
            if epoch == epochs - 1:
                images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return images / (time.perf_counter() - start)


def check_loader(s: Settings) -> dict[str, Any]:
    import torch
    from omegaconf import OmegaConf
    from timm.data import create_dataset, create_loader

    from mixerzoo.training.config import AugConfig, DataConfig
    from mixerzoo.training.data import EpochBatchSampler, create_datasets, train_loader

    device = torch.device(s.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image_folder(root, s.loader_images, max(s.img_size * 8 // 7, 32))
        data = OmegaConf.structured(DataConfig(name="folder", root=str(root), num_classes=4, img_size=s.img_size))
        data.num_workers = s.num_workers
        aug = OmegaConf.structured(AugConfig(re_prob=0.25))
        train_ds, _ = create_datasets(data, aug)
        num_batches = len(train_ds) // s.batch_size
        sampler = EpochBatchSampler(len(train_ds), s.batch_size, seed=0)
        ours = train_loader(train_ds, sampler, data, aug, device)
        ours_img_s = _images_per_second(ours, device, 2, lambda epoch: sampler.set_epoch(epoch, 0, num_batches))
        dataset = create_dataset("", root=str(root), split="train", is_training=True)
        theirs = create_loader(
            dataset,
            input_size=(3, s.img_size, s.img_size),
            batch_size=s.batch_size,
            is_training=True,
            use_prefetcher=True,
            scale=tuple(aug.scale),
            ratio=tuple(aug.ratio),
            hflip=aug.hflip,
            color_jitter=aug.color_jitter,
            interpolation=aug.train_interpolation,
            re_prob=aug.re_prob,
            re_mode=aug.re_mode,
            num_workers=s.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=s.num_workers > 0,
            device=device,
        )
        timm_img_s = _images_per_second(theirs, device, 2, lambda epoch: None)
    return {"ours_img_s": round(ours_img_s, 1), "timm_img_s": round(timm_img_s, 1), "ratio": ours_img_s / timm_img_s}


CHECKS = {
    "tests": check_tests,
    "selective_scan": check_selective_scan,
    "train": check_train,
    "graph_breaks": check_graph_breaks,
    "throughput": check_throughput,
    "loader": check_loader,
}


# --- orchestration --------------------------------------------------------------------------------------------------
def planned_rows(s: Settings, full: bool) -> list[tuple[Row, dict[str, Any]]]:
    """(row, keyword arguments of its check), in the order they run."""
    rows: list[tuple[Row, dict[str, Any]]] = []
    if s.device.startswith("cuda"):
        rows.append((Row("tests", "tests/test_cuda.py", "full" if full else "not slow"), {"full": full}))
    size = "vim2_t stage 1" if s.device.startswith("cuda") else "tiny"
    rows.append((Row("selective_scan", size, "fwd, fwd+bwd"), {"size": size}))
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        if compiled:  # --quick: not the mamba model (its scans are compile boundaries; re-tracing takes 45 s)
            traced = [n for n in TRAIN_MODELS if not (s.quick and "mamba" in n)]
            rows += [(Row("graph_breaks", name, "explain"), {"name": name}) for name in traced]
        if not (compiled and s.quick):
            rows += [(Row("throughput", arch, mode), {"arch": arch, "compiled": compiled}) for arch in TIMM_PEERS]
        if not compiled:
            rows.append((Row("loader", "image folder", "uint8+prefetch"), {}))
        # --quick: compiled (trace-only backend) training of PoolFormerV2-S12 only; the other models'
        # traces take up to a minute on a CPU, and their graph-break rows above already trace them
        names = TIMM_PEERS[:1] if compiled and s.quick else list(TRAIN_MODELS)
        rows += [(Row("train", name, mode), {"name": name, "compiled": compiled}) for name in names]
    return rows


def run_row(row: Row, kwargs: dict[str, Any], s: Settings, in_process: bool, timeout: float) -> None:
    start = time.time()
    try:
        if in_process:
            row.values = CHECKS[row.check](s, **kwargs)
        else:
            job = json.dumps({"check": row.check, "kwargs": kwargs, "settings": asdict(s)})
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", job], cwd=ROOT, capture_output=True, text=True, timeout=timeout
            )
            lines = proc.stdout.strip().splitlines()
            if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
                error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
                raise RuntimeError(error)
            row.values = json.loads(lines[-1])
    except subprocess.TimeoutExpired:
        row.status = f"timeout after {timeout:.0f} s"
    except Exception as err:  # a failed row is reported, the table goes on
        row.status = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if in_process:
            traceback.print_exc()
    row.seconds = round(time.time() - start, 1)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.0f}"
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "-"
    return str(value)


def markdown(rows: list[Row], header: str) -> str:
    lines = [header, "", "| check | name | mode | status | results | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        results = ", ".join(f"{k} {_cell(v)}" for k, v in r.values.items())
        lines.append(f"| {r.check} | {r.name} | {r.mode} | {r.status} | {results} | {r.seconds:.0f} |")
    return "\n".join(lines)


def environment(device: str) -> dict[str, Any]:
    import timm
    import torch

    env = {"torch": torch.__version__, "timm": timm.__version__, "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        env["threads"] = torch.get_num_threads()
    env["date"] = time.strftime("%Y-%m-%d")
    return env


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, rows in this process (CPU: < 1 minute)")
    parser.add_argument("--full", action="store_true", help="also the slow cuda tests (compile equality)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; rows that would start later are skipped")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json/.csv/.md")
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="run only these checks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(CHECKS[job["check"]](Settings(**job["settings"]), **job["kwargs"]), default=str))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            "--device cuda: no CUDA GPU is visible here (torch.cuda.is_available() is False); use --device cpu"
        )
    s = Settings.for_device(args.device, args.quick)
    out = args.out or ROOT / "outputs" / "gpu_check" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    header = (
        f"gpu_check: {env.get('gpu', 'CPU')} | torch {env['torch']}, timm {env['timm']} | {s.precision}, "
        f"channels_last, batch {s.batch_size}, {s.img_size}px | {env['date']}"
    )
    print(header, flush=True)
    deadline = time.time() + args.budget
    rows = []
    for row, kwargs in planned_rows(s, args.full):
        if args.only and row.check not in args.only:
            continue
        remaining = deadline - time.time()
        if remaining <= 0:
            row.status = "skipped: time budget spent"
        else:
            run_row(row, kwargs, s, in_process=args.quick, timeout=remaining)
        rows.append(row)
        print(f"  {row.check:12} {row.name:28} {row.mode:14} {row.status} {json.dumps(row.values, default=str)}")
    table = markdown(rows, header)
    print("\n" + table)
    (out / "gpu_check.md").write_text(table + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=2))
    with open(out / "gpu_check.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["check", "name", "mode", "status", "seconds", "values"])
        for r in rows:
            writer.writerow([r.check, r.name, r.mode, r.status, r.seconds, json.dumps(r.values, default=str)])
    print(f"\nwritten: {out}/gpu_check.md, .json, .csv")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
