"""benchmark.py and collect_results.py: the MAC counter's rules, the table/CSV layout and reference ratios, n/a rows for
grid-bound mixers, the mixer presets, and the multirun collector. No timing assertions (the timed runs are tiny)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from torch.utils.flop_counter import FlopCounterMode

from mixerzoo.mixers import create_channel_mixer, list_channel_mixers, list_mixers
from mixerzoo.models.macs import count_macs
from mixerzoo.tools import benchmarking as benchmark
from mixerzoo.tools import results as collect_results

ROOT = Path(__file__).resolve().parents[1]


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class RealFFTFilter(nn.Module):
    """rfft2 over (H, W) of a channels-last grid, times a constant, irfft2 back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x, dim=(1, 2)) * 2, s=x.shape[1:3], dim=(1, 2))


class ComplexFFT(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(x.to(torch.complex64)).real


class CumsumScan(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=1)


class DeclaredScan(nn.Module):
    """Stands in for a fused kernel: its work is declared through ``scan_macs``."""

    def scan_macs(self, x: torch.Tensor) -> int:
        return 9 * x.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def test_conv_linear_macs_equal_the_analytic_count_and_the_plain_counter() -> None:
    with torch.device("meta"):
        model, x = ConvLinear(), torch.empty(2, 3, 6, 6)
    macs = count_macs(model, x)
    analytic = 2 * (6 * 6 * 8 * 3 * 9 + 8 * 6 * 6 * 10)  # batch 2: conv (HW·Cout·Cin·k²) + linear (in·out)
    with FlopCounterMode(display=False) as plain:
        model(x)
    assert macs.matmul == macs.total == analytic == plain.get_total_flops() // 2
    assert macs.fft == macs.scan == 0


def test_real_fft_rule_counts_the_documented_formula() -> None:
    x = torch.empty(2, 8, 8, 4, device="meta")  # 2·4 = 8 transforms of 8x8 = 64 points, forward and inverse
    macs = count_macs(RealFFTFilter(), x)
    per_transform = 1.25 * 64 * math.log2(64)
    assert macs.fft == 2 * 8 * per_transform > 0
    assert macs.matmul == 0


def test_complex_fft_rule_counts_the_documented_formula() -> None:
    x = torch.empty(3, 16, 16, device="meta")  # 3 transforms of 256 points
    assert count_macs(ComplexFFT(), x).fft == 3 * 2.5 * 256 * 8


def test_scan_rules_count_cumsum_elements_and_declared_kernels() -> None:
    x = torch.empty(2, 16, 8, device="meta")
    assert count_macs(CumsumScan(), x).scan == x.numel()
    assert count_macs(DeclaredScan(), x).scan == 9 * x.numel()


def test_model_arguments_parse_names_configs_overrides_and_globs() -> None:
    spec = benchmark.parse_model_arg("config:metaformer_s12@mixer=attention")[0]
    assert (spec.kind, spec.name, spec.overrides) == ("config", "metaformer_s12", ("mixer=attention",))
    assert spec.label == "config:metaformer_s12@mixer=attention"
    assert benchmark.parse_model_arg("poolformerv2_s12")[0].kind == "timm"
    assert {s.name for s in benchmark.parse_model_arg("config:caformer_s*")} >= {"caformer_s18", "caformer_s36"}
    with pytest.raises(ValueError, match="Unknown timm model"):
        benchmark.parse_model_arg("no_such_model_xyz")


def test_table_and_csv_have_every_column_and_the_reference_ratio_is_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = tmp_path / "bench.csv"
    args = ["config:metaformer_tiny@mixer=pooling", "config:metaformer_tiny@mixer=sepconv", "--img-size", "32"]
    args += ["--reference", "config:metaformer_tiny@mixer=identity", "--build-size", "32", "--batch-size", "2"]
    args += ["--fixed-batch", "--warmup", "0", "--runs", "1", "--in-process", "--threads", "1", "--csv", str(csv_path)]
    rows = benchmark.main(args)
    table = capsys.readouterr().out
    assert "| " + " | ".join(benchmark.COLUMNS) + " |" in table
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == benchmark.COLUMNS
        written = list(reader)
    assert len(written) == len(rows) == 3
    reference = rows[0]
    assert reference["model"] == "config:metaformer_tiny@mixer=identity" and "reference" in reference["note"]
    assert reference["infer_rel"] == reference["latency_rel"] == reference["train_rel"] == 1.0
    for row in rows:
        assert row["params_m"] > 0 and row["gmacs"] > 0
        assert all(row[c] > 0 for c in ("infer_img_s", "latency_ms", "train_img_s", "infer_rel", "train_rel"))


def test_grid_bound_mixer_is_na_with_the_reason_unless_rebuilt_per_resolution() -> None:
    spec = benchmark.parse_model_arg("config:metaformer_tiny@mixer=random")[0]
    cfg = benchmark.BenchmarkConfig(models=[spec], img_sizes=[32, 64], reference=None, build_size=32, macs_only=True)
    at_32, at_64 = benchmark.run_benchmark(cfg, log=lambda message: None)
    assert at_32["gmacs"] > 0 and at_32["note"].startswith("params_m leaves out")  # the frozen random matrices
    assert at_64.get("gmacs") is None and at_64["note"].startswith("n/a") and "grid" in at_64["note"]
    assert benchmark.format_value("gmacs", at_64.get("gmacs")) == "n/a"
    cfg.rebuild_per_resolution = True
    rebuilt_32, rebuilt_64 = benchmark.run_benchmark(cfg, log=lambda message: None)
    assert rebuilt_64["gmacs"] > rebuilt_32["gmacs"] > 0 and "built for 64" in rebuilt_64["note"]


def test_models_above_the_mac_limit_are_not_timed() -> None:
    spec = benchmark.parse_model_arg("config:metaformer_tiny")[0]
    cfg = benchmark.BenchmarkConfig(models=[spec], img_sizes=[32], reference=None, max_gmacs=1e-6, subprocess=False)
    (row,) = benchmark.run_benchmark(cfg, log=lambda message: None)
    assert row["gmacs"] > 0 and row.get("infer_img_s") is None and "--max-gmacs" in row["note"]


def test_mixer_presets_cover_every_registered_mixer() -> None:
    models, sizes = benchmark.preset("mixers")
    assert models == [f"config:metaformer_s12@mixer={m}" for m in list_mixers()] and sizes == [224, 448, 896]
    sweep = yaml.safe_load((ROOT / "configs" / "sweep" / "mixers_s12.yaml").read_text())
    swept = sweep["hydra"]["sweeper"]["params"]["model.mixer"].split(",")
    assert set(swept) <= set(list_mixers()), "configs/sweep/mixers_s12.yaml names a mixer that is not registered"


def test_channel_mixer_preset_puts_each_channel_mixer_in_the_mlp_slot() -> None:
    models, sizes = benchmark.preset("channel-mixers")
    assert len(models) == len(list_channel_mixers()) and sizes == [224, 448, 896]
    for name, model_arg in zip(list_channel_mixers(), models, strict=True):
        with torch.device("meta"):
            model, _ = benchmark.build_model(benchmark.parse_model_arg(model_arg)[0], 224)
            expected = type(create_channel_mixer(name, 64))
        block = model.stages[0].blocks[0]
        assert type(block.mlp) is expected, f"{model_arg}: MLP slot holds {type(block.mlp).__name__}"
        assert type(block.token_mixer).__name__ == "Pooling"


def _fake_job(root: Path, name: str, mixer: str | None, top1: float, with_config: bool = True) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    summary = {"best_top1": top1, "final_top1": top1 - 1, "epochs_completed": 3, "train_images_per_sec": 500.0}
    (job / "summary.json").write_text(json.dumps({**summary, "params": 440_000}))
    if with_config:
        model = {"name": "metaformer_tiny", "mixer": mixer}
        config = {"model": model, "data": {"num_classes": 10, "in_chans": 1, "img_size": 32}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        hydra = {"hydra": {"runtime": {"choices": {"model": "metaformer_tiny"}}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))


def test_collector_counts_macs_of_folder_runs_with_the_class_count_the_run_settled(tmp_path: Path) -> None:
    """data=folder saves data.num_classes: null (the count comes from the class folders at run time); the MACs are
    counted with the count summary.json records, head included."""
    for name, classes in (("0_folder", 3), ("1_folder", 300)):
        _fake_job(tmp_path, name, "pooling", 80.0)
        config_file = tmp_path / name / ".hydra" / "config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["data"]["num_classes"] = None
        config_file.write_text(yaml.safe_dump(config))
        summary_file = tmp_path / name / "summary.json"
        summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "num_classes": classes}))
    few, many = collect_results.collect(tmp_path)
    assert "note" not in few and "note" not in many
    assert many["gmacs"] - few["gmacs"] == pytest.approx(128 * (300 - 3) / 1e9)  # the head: 128 features x classes


def test_collector_builds_the_table_from_summary_files(tmp_path: Path) -> None:
    _fake_job(tmp_path, "1_model.mixer=sepconv", "sepconv", 90.0)
    _fake_job(tmp_path, "0_model.mixer=pooling", "pooling", 80.0)
    _fake_job(tmp_path, "2_model.mixer=identity", None, 70.0, with_config=False)
    rows = collect_results.collect(tmp_path)
    assert [r["job"] for r in rows] == ["0_model.mixer=pooling", "1_model.mixer=sepconv", "2_model.mixer=identity"]
    pooling, sepconv, _ = rows
    assert (pooling["model"], pooling["mixer"], pooling["best_top1"], pooling["params_m"]) == (
        "metaformer_tiny",
        "pooling",
        80.0,
        0.44,
    )
    assert sepconv["gmacs"] > pooling["gmacs"] > 0
    table = collect_results.markdown_table(rows).splitlines()
    assert table[0] == "| " + " | ".join(collect_results.COLUMNS) + " |"
    assert table[2].startswith("| 0_model.mixer=pooling | metaformer_tiny | pooling | 0.44 |")
    assert "| n/a | 500 | 70.00 | 69.00 | 3 |" in table[4]  # no config: no MACs, the rest from summary.json


def test_selective_scan_state_updates_are_counted_for_the_mamba_mixers() -> None:
    from mixerzoo.mixers import create_mixer

    x = torch.empty(2, 4, 5, 32, device="meta")
    with torch.device("meta"):
        token_mixer = create_mixer({"name": "mamba_mixer", "d_state": 16}, 32)
    count = count_macs(token_mixer, x)
    # batch 2 x 4 scan directions x E inner channels x 20 tokens x 16 states
    assert count.scan == 2 * 4 * token_mixer.ssm.d_inner * 20 * 16 > 0


def test_collector_groups_seeds_by_mixer_with_mean_and_std(tmp_path: Path) -> None:
    for i, (mixer, seed, top1) in enumerate((("pooling", 0, 80.0), ("pooling", 1, 84.0), ("sepconv", 0, 90.0))):
        _fake_job(tmp_path, f"{i}_model.mixer={mixer},seed={seed}", mixer, top1)
    rows = collect_results.collect(tmp_path)
    assert rows[0]["img_size"] == 32 and rows[0]["wall_min"] >= 0
    table = collect_results.by_mixer_table(rows, "final_top1").splitlines()
    assert table[0] == "| model | mixer | params_m | gmacs @32 | train_img_s @32 | final_top1 @32 |"
    assert table[2].endswith("| 500 ± 0 (2) | 81.00 ± 2.83 (2) |")  # final = best - 1 in _fake_job
    assert table[3].endswith("| 500 | 89.00 |") and len(table) == 4


def test_collector_by_mixer_csv_is_the_aggregated_table(tmp_path: Path) -> None:
    """``--by-mixer --csv`` writes what ``--by-mixer`` prints (mean and std over seeds per mixer), not job rows."""
    runs = tmp_path / "runs"
    for i, (mixer, seed, top1) in enumerate((("pooling", 0, 80.0), ("pooling", 1, 84.0), ("sepconv", 0, 90.0))):
        _fake_job(runs, f"{i}_model.mixer={mixer},seed={seed}", mixer, top1)
    out = tmp_path / "by_mixer.csv"
    collect_results.main([str(runs), "--by-mixer", "--csv", str(out)])
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == collect_results.BY_MIXER_COLUMNS
    assert [(r["mixer"], r["img_size"], r["jobs"]) for r in rows] == [("pooling", "32", "2"), ("sepconv", "32", "1")]
    pooling, sepconv = rows
    assert float(pooling["final_top1_mean"]) == 81.0 and abs(float(pooling["final_top1_std"]) - 2.828) < 1e-3
    assert float(sepconv["final_top1_mean"]) == 89.0 and sepconv["final_top1_std"] == ""
    assert float(pooling["gmacs"]) > 0 and pooling["model"] == "metaformer_tiny"
