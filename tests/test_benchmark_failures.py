"""benchmark.py reports real errors and fails the run when a requested row fails; a size a
grid-bound model cannot take stays n/a and is not a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixerzoo.tools import benchmarking as benchmark

ROOT = Path(__file__).resolve().parents[1]
MISSPELT = "config:metaformer_tiny@mixer={name:pooling,pool_sizee:3}"


def _rows(*models: str, sizes: tuple[int, ...] = (32,), build_size: int = 32) -> list[dict]:
    specs = [spec for model in models for spec in benchmark.parse_model_arg(model)]
    cfg = benchmark.BenchmarkConfig(
        models=specs, img_sizes=list(sizes), reference=None, build_size=build_size, macs_only=True
    )
    return benchmark.run_benchmark(cfg, log=lambda message: None)


def test_a_misspelt_option_is_a_failure_with_the_constructors_message() -> None:
    (row,) = _rows(MISSPELT)
    assert row["note"].startswith("failed: TypeError: token mixer 'pooling' got unknown option(s) ['pool_sizee']")
    assert benchmark.failed_rows([row]) == [row]


def test_a_grid_bound_size_is_na_not_a_failure() -> None:
    at_32, at_64 = _rows("config:metaformer_tiny@mixer=random", sizes=(32, 64))
    assert at_64["note"].startswith("n/a: random mixer: built for a 8x8 token grid")
    assert benchmark.failed_rows([at_32, at_64]) == []


@pytest.mark.slow
def test_the_script_exits_non_zero_when_a_row_fails(tmp_path: Path) -> None:
    command = [sys.executable, "benchmark.py", MISSPELT, "--macs-only", "--img-size", "32", "--reference", "none"]
    result = subprocess.run([*command, "--csv", str(tmp_path / "b.csv")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "FAILED config:metaformer_tiny" in result.stderr and "pool_sizee" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_up_front() -> None:
    with pytest.raises(SystemExit, match="no CUDA GPU is visible here; use --device cpu"):
        benchmark.main(["resnet18", "--device", "cuda"])


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("config:metaformr_s12", "No model config matches 'metaformr_s12'. Did you mean 'metaformer_s12'"),
        ("poolformer_s99", "Unknown timm model 'poolformer_s99'. Did you mean 'poolformer_s"),
        ("metaformer_s21", "Unknown timm model 'metaformer_s21'. Did you mean 'config:metaformer_s12'"),
    ],
)
def test_a_misspelt_model_is_one_line_with_close_matches_and_no_traceback(
    model: str, expected: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a 12-line traceback ending in the ValueError, and no close matches. ``--debug`` (or
    ``MIXERZOO_DEBUG=1``) brings the traceback back."""
    for name in ("MIXERZOO_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as stop:
        benchmark.main([model, "--macs-only", "--reference", "none"])
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"benchmark.py: error: {expected}") and "Traceback" not in line, line
    with pytest.raises(ValueError, match=expected.split(". ")[0]):
        benchmark.main([model, "--macs-only", "--reference", "none", "--debug"])


def test_a_misspelt_mixer_suggests_the_registered_name() -> None:
    (row,) = _rows("config:metaformer_tiny@mixer=atention")
    assert row["note"].startswith("failed: ValueError: Unknown token mixer 'atention'. Did you mean 'attention'?")


def test_params_say_that_randformers_frozen_matrices_are_left_out() -> None:
    """RandFormer's random matrices are buffers (frozen, not trained): params_m leaves them out and the note says
    how many, as the models page lists them (11.89 + 0.24 M for randformer_s12); other models get no such note."""
    randformer, poolformer = _rows("randformer_s12", "poolformerv2_s12", sizes=(224,), build_size=224)
    assert round(randformer["params_m"], 2) == 11.89
    assert "params_m leaves out 0.24 M frozen weights kept as buffers (random_matrix)" in randformer["note"]
    assert benchmark.failed_rows([randformer]) == []
    assert "frozen" not in poolformer.get("note", "")


def test_cpu_threads_default_to_the_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --threads a CPU run uses the cores the load leaves idle, not torch's one thread per core, which
    oversubscribes a busy machine; --threads still decides."""
    monkeypatch.setattr(benchmark.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    for load, threads in ((0.1, 4), (2.2, 2), (3.9, 1), (9.0, 1)):
        monkeypatch.setattr(benchmark.os, "getloadavg", lambda load=load: (load, load, load))
        cfg = benchmark.config_from_args(benchmark.build_parser().parse_args(["resnet18", "--device", "cpu"]))
        assert cfg.opts.threads == threads, load
    cfg = benchmark.config_from_args(benchmark.build_parser().parse_args(["resnet18", "--threads", "3"]))
    assert cfg.opts.threads == 3
