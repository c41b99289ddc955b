"""Experiments on a machine without a GPU (issue 16 item 7): the recipes run on ``runtime.device=auto`` (CUDA if
there is one, else the CPU), and ``debug=smoke`` (configs/debug/smoke.yaml) turns any experiment into one tiny
epoch on the CPU: digits data, fp32, no gradient accumulation, no warmup or cooldown, two small steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir

from mixerzoo import train
from mixerzoo.models import build_model

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_train(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_there_are_experiments() -> None:
    assert len(EXPERIMENTS) > 30


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_default_to_the_auto_device(experiment: str) -> None:
    """Before: ``runtime=gpu`` (every recipe) said ``device: cuda``, an AssertionError without a GPU."""
    assert compose_train(f"experiment={experiment}").runtime.device == "auto"


def test_auto_device_runs_an_experiment_config_on_the_cpu_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_train("experiment=poolformer_s12", "runtime.num_threads=1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train.setup_runtime(cfg)["device"] == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_preset_makes_every_experiment_tiny_and_cpu_only(experiment: str) -> None:
    """With any experiment: digits on the CPU in fp32, one epoch of 2 steps, no accumulation, no cooldown; the
    experiment's model is kept and builds for the smoke data (on the meta device: shapes only)."""
    cfg = compose_train(f"experiment={experiment}", "debug=smoke")
    plain = compose_train(f"experiment={experiment}")
    assert cfg.model == plain.model  # the experiment's model, unchanged
    assert (cfg.runtime.device, cfg.runtime.precision, cfg.runtime.compile) == ("cpu", "fp32", False)
    assert (cfg.data.name, cfg.data.root, cfg.data.num_classes, cfg.data.img_size) == ("digits", None, 10, 32)
    assert len(cfg.data.mean) == len(cfg.data.std) == cfg.data.in_chans
    assert (cfg.epochs, cfg.sched.cooldown_epochs, cfg.sched.warmup_epochs) == (1, 0, 0)
    assert cfg.optim.grad_accum_steps == 1
    assert cfg.batch_size % 2 == 0 and cfg.batch_size <= 16  # even: Mixup/CutMix pair the images
    assert cfg.limit_train_batches <= 4 and cfg.limit_val_batches <= 2
    assert cfg.name == "smoke"
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data)
    assert model.num_classes == 10


def test_smoke_preset_without_an_experiment_composes() -> None:
    cfg = compose_train("debug=smoke")
    assert (cfg.epochs, cfg.runtime.device, cfg.data.name) == (1, "cpu", "digits")


@pytest.mark.parametrize("experiment", ["poolformer_s12"])  # metaformer recipe: 4x accumulation, 10 cooldown epochs
def test_smoke_preset_trains_an_experiment_end_to_end(tmp_path: Path, experiment: str) -> None:
    """Before: 11 epochs (the cooldown) of 4-step accumulation, after an AssertionError without a GPU."""
    cfg = compose_train(f"experiment={experiment}", "debug=smoke", f"output_dir={tmp_path}", "runtime.num_threads=1")
    train.run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["epochs_completed"], summary["epochs_total"]) == (1, 1)
    assert (summary["device"], summary["precision"], summary["global_batch"]) == ("cpu", "fp32", cfg.batch_size)
