"""The training config tree: every option of every group composes, the schema rejects typos and wrong types,
the experiment files carry the papers' published recipes, and the sweep presets compose."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from mixerzoo import train  # noqa: F401  (registers the schema and resolvers)
from mixerzoo.models import build_model
from mixerzoo.training.config import run_id

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
GROUPS = ("data", "aug", "optim", "sched", "runtime", "logger")
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
SWEEPS = sorted(p.stem for p in (CONFIG_DIR / "sweep").glob("*.yaml"))
NEEDS_PLUGIN = {"slurm": "hydra_plugins.hydra_submitit_launcher", "optuna": "hydra_plugins.hydra_optuna_sweeper"}


def compose_train(*overrides: str, hydra_node: bool = False) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=hydra_node)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the hydra_plugins namespace itself is missing
        return False


def _options(group: str) -> list[tuple[str, str]]:
    return [(group, p.stem) for p in sorted((CONFIG_DIR / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), [o for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_with_the_schema(group: str, option: str) -> None:
    cfg = compose_train(f"{group}={option}", "data.root=/somewhere")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert OmegaConf.get_type(cfg, group) is not dict  # still the typed schema node


@pytest.mark.parametrize("group", [*GROUPS, "debug", "sweep"])
def test_configuration_table_lists_every_option_of_the_group(group: str) -> None:
    """The training page's Configuration table is where users look for a group's options: none may be missing."""
    page = (CONFIG_DIR.parent / "docs" / "training" / "index.md").read_text()
    row = re.search(rf"^\| `{group}/` \| (.*?) \|", page, re.M)
    assert row, f"docs/training/index.md's Configuration table has no row for `{group}/`"
    listed = set(re.findall(r"`([^`]+)`", row.group(1)))
    missing = [option for _, option in _options(group) if option not in listed]
    assert not missing, f"docs/training/index.md's `{group}/` row does not list {missing}"


def test_defaults_are_the_digits_job() -> None:
    cfg = compose_train()
    assert cfg.data.name == "digits" and cfg.data.num_classes == 10
    assert cfg.model.name == "metaformer_tiny"
    model = build_model(cfg.model, cfg.data)
    assert model(torch.zeros(2, cfg.data.in_chans, cfg.data.img_size, cfg.data.img_size)).shape == (2, 10)


def test_timm_model_config_builds_any_timm_model() -> None:
    cfg = compose_train("model=timm", "model.name=resnet10t")
    model = build_model(cfg.model, num_classes=10, in_chans=1)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_misspelt_key_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException, match="lrr") as info:
        compose_train("optim.lrr=1")
    assert isinstance(info.value.__cause__, (ConfigKeyError, ConfigAttributeError))
    assert "Key 'lrr' not in 'OptimConfig'" in str(info.value.__cause__)


def test_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose_train("epochs=ten")
    assert isinstance(info.value.__cause__, ValidationError)
    assert "epochs" in str(info.value.__cause__)


def test_unknown_group_option_is_an_error() -> None:
    with pytest.raises(ConfigCompositionException, match="optim"):
        compose_train("optim=adamww")


# Published ImageNet recipes (specs/metaformer.md section 5): (optimizer, peak lr at batch 4096, warmup epochs,
# drop path, head dropout).
_S5, _S4 = ("s12", "s24", "s36", "m36", "m48"), ("s18", "s36", "m36", "b36")
PUBLISHED_RECIPES: dict[str, tuple[str, float, int, float, float | None]] = {
    **{f"poolformer_{s}": ("adamw", 4e-3, 5, dp, None) for s, dp in zip(_S5, [0.1, 0.1, 0.2, 0.3, 0.4])},
    **{f"identityformer_{s}": ("adamw", 4e-3, 5, dp, None) for s, dp in zip(_S5, [0.1, 0.1, 0.2, 0.3, 0.4])},
    **{f"randformer_{s}": ("adamw", 4e-3, 5, dp, None) for s, dp in zip(_S5, [0.1, 0.1, 0.2, 0.3, 0.3])},
    **{f"poolformerv2_{s}": ("adamw", 4e-3, 5, dp, None) for s, dp in zip(_S5, [0.1, 0.1, 0.2, 0.3, 0.4])},
    **{f"convformer_{s}": ("adamw", 4e-3, 20, dp, 0.0) for s, dp in zip(_S4, [0.2, 0.3, 0.4, 0.6])},
    **{
        f"caformer_{s}": ("lamb", 8e-3, 20, dp, hd) for s, dp, hd in zip(_S4, [0.15, 0.3, 0.4, 0.6], [0, 0.4, 0.4, 0.5])
    },
}


def test_every_metaformer_recipe_has_an_experiment() -> None:
    assert set(PUBLISHED_RECIPES) <= set(EXPERIMENTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_builds_its_model(name: str) -> None:
    cfg = compose_train(f"experiment={name}", "data.root=/imagenet")
    assert cfg.data.root == "/imagenet" and cfg.epochs > 0
    with torch.device("meta"):  # every key of the experiment's model node is accepted by the constructor
        model = build_model(cfg.model, cfg.data)
    assert model.num_classes == cfg.data.num_classes


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_RECIPES))
def test_metaformer_experiment_reproduces_the_published_recipe(name: str) -> None:
    cfg = compose_train(f"experiment={name}", "data.root=/imagenet")
    opt, lr, warmup, drop_path, head_dropout = PUBLISHED_RECIPES[name]
    assert (cfg.optim.opt, cfg.optim.lr, cfg.optim.lr_base_size, cfg.optim.weight_decay) == (opt, lr, 4096, 0.05)
    assert cfg.batch_size * 8 * cfg.optim.grad_accum_steps == 4096  # 8 GPUs x 128 x accumulation 4
    assert (cfg.epochs, cfg.sched.cooldown_epochs, cfg.sched.warmup_epochs) == (300, 10, warmup)
    assert (cfg.sched.sched, cfg.sched.warmup_lr, cfg.sched.min_lr) == ("cosine", 1e-6, 1e-5)
    assert (cfg.aug.auto_augment, cfg.aug.mixup, cfg.aug.cutmix) == ("rand-m9-mstd0.5-inc1", 0.8, 1.0)
    assert (cfg.aug.smoothing, cfg.aug.re_prob, cfg.ema.enabled) == (0.1, 0.25, False)
    assert (cfg.data.name, cfg.data.num_classes, cfg.data.img_size) == ("folder", 1000, 224)
    assert cfg.data.crop_pct == (0.9 if name.startswith("poolformer_") else 1.0)
    assert cfg.model.drop_path_rate == drop_path
    head = OmegaConf.to_container(cfg.model).get("head")
    assert (head.get("dropout") if isinstance(head, dict) else None) == head_dropout
    own_model = OmegaConf.to_container(compose_train(f"model={name}").model)
    experiment_model = OmegaConf.to_container(cfg.model)
    for model in (own_model, experiment_model):  # the recipe sets drop path and head dropout, nothing else
        model.pop("drop_path_rate", None)
        if isinstance(model.get("head"), dict):
            model["head"].pop("dropout", None)
    assert experiment_model == own_model


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_preset_composes(name: str) -> None:
    if name in NEEDS_PLUGIN and not _installed(NEEDS_PLUGIN[name]):
        pytest.skip(f"{NEEDS_PLUGIN[name]} is not installed (optional extra)")
    cfg = compose_train(f"sweep={name}", "data.root=/imagenet", hydra_node=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" or name == "slurm"
    assert cfg.hydra.sweeper.params or name == "slurm"


def test_run_dirs_are_unique_within_a_second_and_shared_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}-\d{3}", run_id())  # millisecond resolution
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert run_id().endswith("torchrun_abc123")
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml"), resolve=False)
    assert raw["hydra"]["sweep"]["subdir"].startswith("${hydra.job.num}")  # one directory per sweep job
