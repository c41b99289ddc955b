"""Expected user errors end train.py and benchmark.py with one line naming the problem, not a traceback
(``mixerzoo.training.errors.user_errors``); ``MIXERZOO_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` bring the traceback back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir

import mixerzoo
from mixerzoo import train
from mixerzoo.training.errors import user_errors

CONFIG_DIR = Path(mixerzoo.__file__).resolve().parent / "configs"


def compose_train(*overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIXERZOO_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)


def test_a_checkpoint_of_another_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_debug: None
) -> None:
    """train.py checkpoint=<a sepconv model's weights> with the pooling model: before, about 18 lines of Hydra's
    traceback came first and then "Set the environment variable HYDRA_FULL_ERROR=1"."""
    weights = tmp_path / "sepconv.pth"
    torch.save(mixerzoo.create_model("metaformer_tiny", mixer="sepconv", num_classes=10).state_dict(), weights)
    cfg = compose_train("debug=smoke", "eval_only=true", f"checkpoint={weights}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(SystemExit) as stop, user_errors("train.py"):
        train.run(cfg)
    assert stop.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("train.py: error: Checkpoint (detected layout: zoo") and "does not fit MetaFormer" in line
    assert line.endswith("(MIXERZOO_DEBUG=1 shows the traceback)")


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ValueError("Unknown token mixer 'atention'. Did you mean 'attention'?"), "Unknown token mixer 'atention'"),
        (TypeError("token mixer 'pooling' got unknown option(s) ['pool_sizee']"), "got unknown option(s)"),
        (FileNotFoundError(2, "No such file or directory", "/data/none"), "No such file or directory: /data/none"),
    ],
)
def test_expected_errors_become_one_line(
    error: Exception, line: str, capsys: pytest.CaptureFixture[str], no_debug: None
) -> None:
    with pytest.raises(SystemExit), user_errors("benchmark.py"):
        raise error
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith("benchmark.py: error: ") and line in printed


@pytest.mark.parametrize("variable", ["MIXERZOO_DEBUG", "HYDRA_FULL_ERROR"])
def test_a_debug_variable_keeps_the_traceback(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ValueError, match="bad"), user_errors("train.py"):
        raise ValueError("bad")


def test_other_errors_keep_their_traceback(no_debug: None) -> None:
    """A bug is not a user error: it propagates as it is."""
    with pytest.raises(ZeroDivisionError), user_errors("train.py"):
        _ = 1 / 0


def test_a_misspelt_mixer_in_the_model_config_is_one_line_with_the_close_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_debug: None
) -> None:
    """``train.py model.mixer=atention``: Hydra's instantiate wraps the registry's ValueError in its own exception;
    the one line is the registry's message with its "Did you mean"."""
    cfg = compose_train("debug=smoke", "model.mixer=atention", f"output_dir={tmp_path}")
    with pytest.raises(SystemExit), user_errors("train.py"):
        train.run(cfg)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("train.py: error: Unknown token mixer 'atention'. Did you mean 'attention'?"), line


def test_train_py_ends_a_misspelt_mixer_with_one_line(tmp_path: Path) -> None:
    """The script itself wraps its run: one line on stderr, exit status 1, no traceback."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("MIXERZOO_DEBUG", "HYDRA_FULL_ERROR")}
    args = [sys.executable, str(CONFIG_DIR.parent / "train.py"), "model.mixer=atention", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(args, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 1
    assert "train.py: error: Unknown token mixer 'atention'. Did you mean 'attention'?" in done.stderr
    assert "Traceback" not in done.stderr
