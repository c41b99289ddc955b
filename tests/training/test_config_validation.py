"""Bad values get an answer that names the key and the fix, before anything is built: a key the
schema lacks added with ``+`` (the form Hydra's own error suggests), and values the types allow but training
cannot use (``epochs=0``, ``batch_size=0``, ...). Every shipped config passes the same check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from mixerzoo import train

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
TINY = ["batch_size=32", "limit_train_batches=1", "limit_val_batches=1", "epochs=1", "logger.progress_bar=false"]


def compose_train(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+optim.lrr=1", r"unknown key optim\.lrr .*did you mean optim\.lr\? Set it without '\+': optim\.lr=1"),
        ("+lrr=1", r"unknown key lrr .*the top level \(TrainConfig\) has no such key"),
        (
            "+runtime.distributed.backnd=gloo",
            r"unknown key runtime\.distributed\.backnd .*runtime\.distributed\.backend",
        ),
        ("epochs=0", r"epochs=0 is not allowed \(must be >= 1\): set epochs=1 or more"),
        ("batch_size=0", r"batch_size=0 is not allowed \(must be >= 1\): set batch_size=1 or more"),
        ("batch_size=-4", r"batch_size=-4 is not allowed"),
        ("optim.grad_accum_steps=0", r"optim\.grad_accum_steps=0 is not allowed.*optim\.grad_accum_steps=1"),
        ("eval_batch_size=0", r"eval_batch_size=0 is not allowed.*or null"),
        ("limit_train_batches=0", r"limit_train_batches=0 is not allowed"),
        ("data.num_classes=0", r"data\.num_classes=0 is not allowed"),
        ("logger.log_interval=0", r"logger\.log_interval=0 is not allowed"),
        ("sched.cooldown_epochs=-1", r"sched\.cooldown_epochs=-1 is not allowed"),
        ("data.val_fraction=1.5", r"data\.val_fraction=1\.5 must be between 0 and 1"),
    ],
)
def test_bad_value_is_a_clear_error_naming_the_key_and_the_fix(tmp_path: Path, override: str, message: str) -> None:
    """Before: ``+optim.lrr=1`` trained and ignored it, ``epochs=0`` was a bare AssertionError from timm's
    scheduler, ``batch_size=0`` 'range() arg 3 must not be zero'."""
    cfg = compose_train(f"output_dir={tmp_path}", *TINY, override)
    with pytest.raises(ValueError, match=message):
        train.run(cfg)
    assert not (tmp_path / "summary.json").exists()


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    cfg = compose_train(f"output_dir={tmp_path}", "+optim.lrr=1", "epochs=0", "batch_size=0")
    with pytest.raises(ValueError, match=r"(?s)optim\.lrr.*epochs=0.*batch_size=0"):
        train.setup(cfg)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        [f"{group}={option}"]
        for group in ("model", "data", "aug", "optim", "sched", "runtime", "logger", "debug")
        for option in _options(group)
    ]
    + [[f"experiment={name}"] for name in _options("experiment")]
    + [[f"experiment={name}", "debug=smoke"] for name in _options("experiment")],
    ids=str,
)
def test_every_shipped_config_passes_validation(overrides: list[str]) -> None:
    """No false alarms: every group option and every experiment (alone and with the smoke preset) is valid."""
    from mixerzoo.training.config import validate_config

    validate_config(compose_train("data.root=/somewhere", *overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.mixer=attention", "+model.mixer.head_dim=16"],
            r"model\.mixer is \{'head_dim': 16\}: a mixer spec .* has no 'name'\. '\+model\.mixer\.head_dim=16' .*"
            r"replaces the whole mixer .* 'model\.mixer=\{name:<name>,head_dim:16\}'",
        ),
        (
            ["model.mixer=[pooling,pooling,{head_dim:16}]"],
            r"model\.mixer\[2\] is \{'head_dim': 16\}: .* 'model\.mixer=\{name:<name>,head_dim:16\}'",
        ),
        (
            ["model.block.mlp=mlp", "+model.block.mlp.ratio=3"],
            r"model\.block\.mlp is \{'ratio': 3\}: a channel mixer spec .* 'model\.block\.mlp=\{name:<name>,ratio:3\}'",
        ),
    ],
    ids=["plus-option", "per-stage", "channel-mixer"],
)
def test_a_mixer_replaced_by_its_option_is_caught_before_the_build(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    """Hydra's trap: ``model.mixer.head_dim=16`` fails on a mixer given by name and Hydra suggests ``+...``, which
    replaces the mixer by ``{head_dim: 16}``. Before: validation passed and the build failed later with "A token
    mixer spec mapping needs a 'name' key", which does not say why or how to pass an option."""
    from mixerzoo.training.config import validate_config

    with pytest.raises(ValueError, match=message):
        validate_config(compose_train(f"output_dir={tmp_path}", *overrides))


def test_the_brace_form_of_a_mixer_with_options_is_valid(tmp_path: Path) -> None:
    from mixerzoo.training.config import validate_config

    cfg = compose_train(f"output_dir={tmp_path}", "model.mixer={name:attention,head_dim:16}")
    validate_config(cfg)
    assert cfg.model.mixer == {"name": "attention", "head_dim": 16}
