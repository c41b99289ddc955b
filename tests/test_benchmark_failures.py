"""benchmark.py reports real errors and fails the run when a requested row fails (issue 16, item 5); a size a
grid-bound model cannot take stays n/a and is not a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixerzoo import benchmark

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


def test_the_script_exits_non_zero_when_a_row_fails(tmp_path: Path) -> None:
    command = [sys.executable, "benchmark.py", MISSPELT, "--macs-only", "--img-size", "32", "--reference", "none"]
    result = subprocess.run([*command, "--csv", str(tmp_path / "b.csv")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "FAILED config:metaformer_tiny" in result.stderr and "pool_sizee" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_up_front() -> None:
    with pytest.raises(SystemExit, match="no CUDA GPU is visible here; use --device cpu"):
        benchmark.main(["resnet18", "--device", "cuda"])
