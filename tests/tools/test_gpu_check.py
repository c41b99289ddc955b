"""tools/gpu_check.py: its time plan, and the documented GPU-machine procedure run on a CPU as it runs there (a plain
copy of the repository, ``python3`` without this package or hydra-core, the wheels installed with ``--target``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import torch

from mixerzoo.tools import gpu_check

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "gpu-check.md"
WHEELS = ["hydra-core", "omegaconf", "antlr4-python3-runtime"]
# what the GPU machine's python3 lacks: hydra-core and its two pure-Python needs, and any install of this package
MISSING_THERE = re.compile(
    r"^(hydra|omegaconf|antlr4|mixerzoo)$|^(hydra_core|omegaconf|antlr4_python3_runtime|token_mixer_zoo)-.*-info$"
    r"|^__editable__|\.pth$"
)


def test_each_part_fits_its_eight_minutes_in_priority_order() -> None:
    """Part 1 is (a) the cuda tests then (b) zoo vs timm, eager before compiled; part 2 is (c) scan and throughput,
    (d) train, (e) memory; each part's budget is at most 8 minutes, both together leave a 15-minute GPU allowance
    room for the machine's start."""
    order = {p: [(check, mode) for part, check, _, mode, _, _ in gpu_check.PLAN if part == p] for p in (1, 2)}
    assert [c for c, _ in order[1]] == ["tests", *["zoo_vs_timm"] * 4]
    assert [m for _, m in order[1]][1:] == ["eager", "eager", "compiled", "compiled"]
    checks = [c for c, _ in order[2]]
    assert checks == sorted(checks, key=["selective_scan", "throughput", "train", "memory"].index)
    assert [name for part, check, name, *_ in gpu_check.PLAN if check == "memory"] == ["vim2_t", "vim2_s", "vim2_b"]
    assert all(gpu_check.part_budget(p) <= 8 * 60 for p in (1, 2))
    assert gpu_check.part_budget(1) + gpu_check.part_budget(2) <= 13 * 60


@pytest.mark.parametrize("overrun", [0.0, 1.0, 5.0], ids=["on time", "rows overrun", "rows hang"])
def test_every_row_gets_its_allotment_and_the_part_ends_in_its_budget(overrun: float) -> None:
    """Rows that want ``(1 + overrun) x`` their allotment: each still starts with at least its own allotment, and
    the last one ends by the deadline (the rule the script applies with a real clock)."""
    allotted = [allot for part, *_, allot in gpu_check.PLAN if part == 1]
    deadline, now = float(sum(allotted)), 0.0
    for i, allot in enumerate(allotted):
        timeout = gpu_check.row_timeout(deadline, now, sum(allotted[i + 1 :]))
        assert timeout >= allot - 1e-9
        now += min(timeout, allot * (1 + overrun))
    assert now <= deadline + 1e-9


def test_a_row_past_its_time_is_killed_with_what_it_started() -> None:
    """The row's process group goes: here a shell and the ``sleep`` it started (a loader or compile worker)."""
    proc = subprocess.Popen(
        ["bash", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    child = int(proc.stdout.readline())
    gpu_check._kill_group(proc)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.05)
    assert proc.returncode == -signal.SIGKILL and not _alive(child)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_the_triton_row_gives_every_scan_of_vim2_t_the_triton_backend() -> None:
    """The (c) row that a CPU skips: its model keywords reach each token and channel mixer's scan (built, not run)."""
    import timm

    def backends(model: torch.nn.Module) -> list[str]:
        return [m.backend for m in model.modules() if isinstance(getattr(m, "backend", None), str)]

    default = backends(timm.create_model("vim2_t"))
    assert len(default) == 18 and set(default) == {"auto"}  # 12 token mixers, 6 channel mixers
    assert backends(timm.create_model("vim2_t", **gpu_check._vim2_kwargs("vim2_t", "triton"))) == ["triton"] * 18


def _wheel_of_installed(name: str, folder: Path) -> Path:
    """A wheel of the installed pure-Python distribution ``name``, zipped from its installed files (its RECORD): the
    wheel that docs/gpu-check.md's ``pip download``/``pip wheel`` fetch, rebuilt here without the network."""
    dist = importlib.metadata.distribution(name)
    stem = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = folder / f"{stem}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for file in dist.files or []:
            if file.parts[0] != ".." and "__pycache__" not in file.parts:
                whl.write(dist.locate_file(file), str(file))
    return path


def _device_python(tmp: Path) -> Path:
    """A ``python3`` like the GPU machine's: a fresh virtual environment that sees this environment's packages
    (torch, timm, pytest, pip...) through a path entry, less ``MISSING_THERE``."""
    site = tmp / "device_site"
    site.mkdir()
    paths = sysconfig.get_paths()
    for folder in dict.fromkeys([paths["purelib"], paths["platlib"]]):
        for entry in Path(folder).iterdir():
            if not MISSING_THERE.search(entry.name) and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "py")], check=True)
    python = tmp / "py" / "bin" / "python3"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "device_site.pth").write_text(f"{site}\n")
    return python


def documented_calls() -> list[str]:
    """The bash blocks of docs/gpu-check.md's section "2. Run it on the GPU machine", one per call."""
    section = DOC.read_text().split("## 2. Run it on the GPU machine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [b for b in blocks if "tools/gpu_check.py" in b]


@pytest.mark.slow
@pytest.mark.parametrize("part", [1, 2])
def test_gpu_check_script_runs_on_the_cpu(tmp_path: Path, part: int) -> None:
    """The documented call of each part, word for word plus ``--device cpu --quick``, in a fresh copy of the tracked
    files with the GPU machine's kind of interpreter (see ``_device_python``): every row of the part runs in its
    subprocess as it would there, and writes the table, JSON, CSV and log under --out. On today's code without the
    ``mixerzoo`` link (``use_this_checkout``), every row fails with ModuleNotFoundError. (One test per part: the
    parts run side by side under pytest-xdist, as they are two separate calls on the GPU machine.)"""
    copy = tmp_path / "repo"  # not "mixerzoo": the package must not import because of the folder's name
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True, text=True)
    for name in filter(None, tracked.stdout.split("\0")):
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    (copy / ".whl").mkdir()
    for name in WHEELS:
        _wheel_of_installed(name, copy / ".whl")
    python = _device_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{python.parent}{os.pathsep}{env['PATH']}", "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    for module in ("mixerzoo", "hydra"):  # the simulated machine lacks what the real one lacks
        probe = subprocess.run(["python3", "-c", f"import {module}"], cwd=copy, env=env, capture_output=True)
        assert probe.returncode != 0, f"{module} is importable without the procedure"
    cpu = ["--device", "cpu", "--quick"]  # the only words added to the documented calls
    calls = documented_calls()
    assert len(calls) == 2 and all("/tmp/site" in call for call in calls) and f"--part {part}" in calls[part - 1]
    script = calls[part - 1].replace("/tmp/site", str(tmp_path / "site"))
    script = re.sub(r"(tools/gpu_check\.py[^\n]*)", lambda m: " ".join([m[1], *cpu]), script)
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=copy, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / f"gpu_check_part{part}.json").read_text())["rows"]
    assert [(r["check"], r["name"], r["mode"]) for r in rows] == [
        (check, name, mode) for p, check, name, mode, *_ in gpu_check.PLAN if p == part
    ]
    for r in rows:
        cuda_only = r["check"] == "throughput" and r["mode"] == "scan triton"
        assert r["status"] == ("skipped: needs a CUDA device" if cuda_only else "ok"), r
    for suffix in (".md", ".csv", ".log"):
        assert (tmp_path / "out" / f"gpu_check_part{part}{suffix}").stat().st_size > 0
    if part == 1:
        tests = rows[0]["values"]
        assert tests["skipped"] > 30 and tests["passed"] == tests["failed"] == tests["error"] == 0  # collected there
    else:
        assert all(r["values"]["resume_ok"] and r["values"]["eval_ok"] for r in rows if r["check"] == "train")
