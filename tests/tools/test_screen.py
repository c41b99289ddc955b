"""tools/screen.py: the capability screen's scores, checks and rank correlation, on constructed results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixerzoo.tools import screen


def test_normalised_accuracy_is_zero_at_chance_and_one_at_100() -> None:
    assert screen.normalised(50.0, "longrange") == 0.0 and screen.normalised(100.0, "count") == 1.0
    assert screen.normalised(75.0, "recall") == pytest.approx(0.5)


def test_aggregate_is_the_per_seed_mean_of_normalised_accuracies() -> None:
    r = {"a": {"longrange": [100.0, 50.0], "count": [50.0, 50.0]}}
    assert screen.aggregate_per_seed(r, ["longrange", "count"]) == {"a": [0.5, 0.0]}


def test_spearman_matches_a_hand_count() -> None:
    """Ranks 1..5 against 1, 2, 3, 5, 4: d^2 = 2, rho = 1 - 6 * 2 / (5 * 24) = 0.9."""
    assert screen.spearman([1, 2, 3, 4, 5], [10, 20, 30, 50, 40]) == pytest.approx(0.9)
    assert screen.spearman([5, 4, 3, 2, 1], [74.6, 76.6, 78.0, 83.0, 83.6]) == pytest.approx(-1.0)


def test_rank_check_uses_the_imagenet_order_and_each_seed() -> None:
    order = ["identity", "random", "pooling", "sepconv", "attention"]
    aggregates = {m: [0.1 * i, 0.1 * (4 - i)] for i, m in enumerate(order)}  # seed 0 agrees, seed 1 reverses
    aggregates["strip_mlp"] = [1.0, 1.0]  # not in the published table: left out
    rank = screen.rank_check(aggregates)
    assert rank["mixers"] == order
    assert rank["rho_per_seed"] == pytest.approx([1.0, -1.0])


def test_probe_checks_flag_separation_chance_and_ceiling() -> None:
    r = {
        "a": {"longrange": [90.0, 92.0, 94.0], "count": [50.0, 51.0, 49.0], "recall": [99.0, 100.0, 98.0]},
        "b": {"longrange": [50.0, 50.0, 50.0], "count": [52.0, 48.0, 50.0], "recall": [96.0, 97.0, 98.0]},
    }
    checks = {c["probe"]: c for c in screen.probe_checks(r, ["longrange", "count", "recall"])}
    assert checks["longrange"]["separated"] and (checks["longrange"]["best"], checks["longrange"]["worst"]) == (
        "a",
        "b",
    )
    assert checks["longrange"]["gap"] == pytest.approx(42.0) and checks["longrange"]["larger_std"] == pytest.approx(2.0)
    assert checks["count"]["all_at_chance"] and not checks["count"]["separated"]
    assert checks["recall"]["all_at_ceiling"] and not checks["longrange"]["all_at_ceiling"]


def fake_job(root: Path, mixer: str, probe: str, seed: int, top1: float, stopped_by: str | None = None) -> None:
    job = root / f"{mixer}_{probe}_{seed}{'_stopped' if stopped_by else ''}"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(
        f"model:\n  _target_: timm.create_model\n  model_name: isoformer_tiny\n  mixer: {mixer}\n"
        f"data:\n  name: probe_{probe}\n  img_size: 32\n  in_chans: 1\n  num_classes: 2\nseed: {seed}\n"
    )
    summary = {"final_top1": top1, "best_top1": top1, "params": 34000, "train_images_per_sec": 500.0}
    summary.update(epochs_completed=1, epochs_total=1, stopped_by=stopped_by)
    (job / "summary.json").write_text(json.dumps(summary))


def test_main_writes_the_tables_from_a_run_directory(tmp_path: Path) -> None:
    probes = ["longrange", "symmetry", "recall", "count"]
    rng = np.random.default_rng(0)
    for mixer, level in (("attention", 95.0), ("pooling", 60.0), ("identity", 50.0)):
        for probe in probes:
            for seed in range(3):
                fake_job(tmp_path / "run", mixer, probe, seed, level + rng.uniform(-1, 1))
    fake_job(tmp_path / "run", "identity", "recall", 0, 99.0, stopped_by="SIGTERM")  # a killed job: left out
    out = screen.main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--no-plots"])
    assert [r["mixer"] for r in out["summary"]] == ["attention", "pooling", "identity"]
    assert out["summary"][-1]["recall_mean"] < 52.0 and out["summary"][-1]["seeds"] == 3
    assert all(c["separated"] for c in out["checks"])
    rows = (tmp_path / "out" / "screen.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 4 * 3 and rows[0].startswith("mixer,probe,seed,final_top1")
    assert "Spearman" in (tmp_path / "out" / "screen.md").read_text()


def test_cpu_times_read_time_files_and_mark_killed_invocations(tmp_path: Path) -> None:
    (tmp_path / "s0_pooling.txt").write_text("301.26 23.99 1.96\n")
    (tmp_path / "s0_mamba_mixer.txt").write_text("Command terminated by signal 9\n1200.5 110.0 2.0\n")
    times = screen.cpu_times(tmp_path)
    assert times["s0_pooling"] == pytest.approx({"wall": 301.26, "cpu": 25.95, "killed": False})
    assert times["s0_mamba_mixer"]["killed"] and times["s0_mamba_mixer"]["cpu"] == pytest.approx(112.0)
