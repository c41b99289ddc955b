"""Shared helpers: compose model configs the way train.py does, and the published figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

import mixerzoo
from mixerzoo.models.affnet_family import SIZES as AFFNET_SIZES
from mixerzoo.models.hydra_family import SIZES as HYDRA_SIZES
from mixerzoo.models.isotropic_family import SIZES as ISOFORMER_SIZES
from mixerzoo.models.metaformer_baselines import SIZES
from mixerzoo.models.stripmlp_family import SIZES as STRIPMLP_SIZES
from mixerzoo.models.vim2_family import SIZES as VIM2_SIZES
from mixerzoo.training.data import usable_cpus

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
MODEL_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
# every timm name the zoo registers, family by family
ZOO_TIMM_NAMES = [f"{family}_{size}" for family in ("identityformer", "randformer") for size in SIZES]
ZOO_TIMM_NAMES += [*AFFNET_SIZES, *STRIPMLP_SIZES, *HYDRA_SIZES, *VIM2_SIZES, *ISOFORMER_SIZES]


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker and the processes its tests start get an equal share of the cores. With
    torch's default (every core in every worker), the workers' OpenMP threads spin against each other: the whole
    suite took 18.7 instead of 13.0 minutes on 2 cores, 32 instead of 22 CPU-minutes."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = str(max(1, usable_cpus() // workers))
        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = threads


_share_the_cores()


def compose_model_config(name: str, overrides: list[str] | None = None) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(overrides=[f"+model={name}", *(overrides or [])]).model


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A model from ``configs/model/<name>.yaml`` through the one build function, like train.py builds it.

    The model group is composed on its own, so these tests do not depend on the rest of the training tree."""
    return mixerzoo.build_model(compose_model_config(name), **kwargs)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run first (in their collection order): under pytest-xdist a minute-long test that
    starts last keeps one core busy while the others idle. Tests marked ``cuda`` are skipped, with the reason,
    where there is no GPU."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: the order within each group is kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run tools/gpu_check.py on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
