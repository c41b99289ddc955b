"""Every model one Python call away: ``create_model(name, **overrides)``.

``name`` is a model config (``configs/model/<name>.yaml``, what ``python train.py model=<name>`` builds: the
builder-made PoolFormer/ConvFormer/CAFormer, the mixer ablations, the named families) or else any timm model name
(the zoo's families are registered in timm). Keyword arguments override the config's keys, e.g.
``create_model("caformer_s18", mixer=["pooling", "pooling", "attention", "attention"], num_classes=100)``.

The builder-made versions of timm's PoolFormer/ConvFormer/CAFormer are not registered in timm under second names:
``timm.create_model("caformer_s18")`` stays timm's own model (same architecture and parameter count, timm's key
layout), and one name in timm's registry means one model. Here the config wins, so
``create_model("caformer_s18")`` is the zoo's; ``timm.create_model`` is one import away for timm's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch.nn as nn
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

__all__ = ["CONFIG_DIR", "create_model", "list_model_configs", "model_config"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def list_model_configs() -> list[str]:
    """The names of ``configs/model/*.yaml``, sorted (the values ``model=`` takes in ``train.py``)."""
    return sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))


def model_config(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The composed ``configs/model/<name>.yaml`` (its family defaults merged), with Hydra ``overrides`` on the
    ``model`` group (e.g. ``["model.dims=[32,64,160,256]"]``). Works inside a running Hydra app too."""
    if name not in list_model_configs():
        raise ValueError(
            f"No model config {name!r} in {CONFIG_DIR / 'model'}; known: {', '.join(list_model_configs())}."
        )
    global_hydra = GlobalHydra.instance()
    running = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(overrides=[f"+model={name}", *(overrides or [])]).model
    finally:
        if running is not None:
            global_hydra.clear()
            global_hydra.initialize(running)


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The model of ``configs/model/<name>.yaml`` with ``kwargs`` overriding its keys, or timm's model ``name``
    (``timm.create_model(name, pretrained, **kwargs)``) when there is no such config."""
    if name not in list_model_configs():
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    cfg = model_config(name)
    if pretrained:
        if cfg.get("_target_") != "timm.create_model":
            raise ValueError(
                f"{name!r} is a builder config with no weights of its own; load a file with "
                "mixerzoo.load_checkpoint(model, path) (timm and official layouts are converted)."
            )
        kwargs["pretrained"] = True
    return instantiate(cfg, **kwargs)
