"""train.py end to end on the embedded digits set: outputs, exact resume, AMP, EMA, mixup, the NaN guard, eval,
clear errors for bad inputs, and the RandAugment fix for Pillow 13. Runs in-process with composed configs
(``train.run``) and, where the process boundary is the point (signals, sweeps, the CLI), as subprocesses."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform

import mixerzoo
from mixerzoo import train
from mixerzoo.models import build_model
from mixerzoo.training import loop, signals
from mixerzoo.training.data import DigitsDataset

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
# small and quick: 6 steps of 32 images per epoch, then validation on all 360 images
TINY = ["batch_size=32", "limit_train_batches=6", "logger.progress_bar=false", "runtime.num_threads=1"]


def compose_train(output_dir: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", *TINY, *overrides])


def run(output_dir: Path, *overrides: str) -> float:
    return train.run(compose_train(output_dir, *overrides))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_one_epoch_writes_every_output(tmp_path: Path) -> None:
    top1 = run(tmp_path, "epochs=1")
    summary = read_json(tmp_path / "summary.json")
    for key in ("best_top1", "final_top1", "epochs_completed", "train_images_per_sec", "params"):
        assert summary[key] is not None, key
    assert summary["num_classes"] == 10  # the settled class count (collect_results needs it for data=folder runs)
    assert summary["epochs_completed"] == 1 and summary["best_top1"] == top1
    cfg = compose_train(tmp_path)
    assert summary["params"] == sum(p.numel() for p in build_model(cfg.model, cfg.data).parameters())
    assert (tmp_path / "metrics.csv").read_text().startswith("epoch,train_loss")
    assert read_json_lines(tmp_path / "metrics.jsonl")[0]["epoch"] == 1
    ckpt = load(tmp_path / "last.pth")  # weights_only=True: only tensors and plain Python values inside
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "global_step", "rng", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 6 and ckpt["config"]["data"]["name"] == "digits"
    fresh = build_model(cfg.model, cfg.data)
    mixerzoo.load_checkpoint(fresh, tmp_path / "best.pth")  # the zoo's loader unwraps {"model": ...}
    assert not list(tmp_path.glob("*.tmp"))


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_continues_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2-epoch run stopped after its 1st epoch and resumed == the same run straight through (with EMA,
    Mixup/CutMix and random erasing: model, optimizer, scheduler, EMA and every RNG must be restored)."""
    extra = ["epochs=2", "ema.enabled=true", "ema.decay=0.9", "aug.mixup=0.8", "aug.cutmix=1.0", "aug.re_prob=0.25"]
    extra += ["sched.warmup_epochs=0.5"]  # the 2nd epoch is on the cosine part of the schedule
    run(tmp_path / "straight", *extra)
    log_epoch = loop.log_epoch

    def log_then_stop(*args: Any) -> None:  # as if SIGTERM arrived during the 1st epoch's validation
        log_epoch(*args)
        signals.on_stop_signal(signal.SIGTERM, None)

    monkeypatch.setattr(loop, "log_epoch", log_then_stop)
    monkeypatch.setattr(signals, "_received", None)
    with pytest.raises(signals.StopSignalExit):  # checkpoint and summary written, then the process would end
        run(tmp_path / "resumed", *extra)
    first = load(tmp_path / "resumed" / "last.pth")
    monkeypatch.setattr(loop, "log_epoch", log_epoch)
    signals.clear()
    run(tmp_path / "resumed", *extra, "resume=auto")
    straight, resumed = load(tmp_path / "straight" / "last.pth"), load(tmp_path / "resumed" / "last.pth")
    assert first["epoch"] == 1 and resumed["epoch"] == 2 and resumed["global_step"] == straight["global_step"]
    for part in ("model", "ema"):
        for key, value in straight[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=1e-6, msg=f"{part}.{key}")
    assert read_json(tmp_path / "resumed" / "summary.json")["epochs_completed"] == 2
    assert len(read_json_lines(tmp_path / "resumed" / "metrics.jsonl")) == 2


@pytest.mark.slow
def test_cli_default_job_then_resume_auto(tmp_path: Path) -> None:
    """The documented two-step: `python train.py epochs=1`, then `epochs=2 resume=auto` in the same run dir."""
    base = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", *TINY]
    subprocess.run([*base, "epochs=1"], cwd=ROOT, env=subprocess_env(), check=True, capture_output=True)
    subprocess.run([*base, "epochs=2", "resume=auto"], cwd=ROOT, env=subprocess_env(), check=True, capture_output=True)
    assert read_json(tmp_path / "summary.json")["epochs_completed"] == 2
    assert (tmp_path / ".hydra" / "config.yaml").is_file() and (tmp_path / "train.log").is_file()


def test_bf16_autocast_on_cpu(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1", "runtime.precision=bf16", "runtime.channels_last=true", "logger.progress_bar=true")
    summary = read_json(tmp_path / "summary.json")
    assert summary["precision"] == "bf16" and summary["final_top1"] > 10  # learnt something, no NaN


def test_fp16_uses_a_grad_scaler(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1", "runtime.precision=fp16")
    assert load(tmp_path / "last.pth")["scaler"]["scale"] > 0


def test_tensorboard_logs_or_is_skipped_when_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run(tmp_path, "epochs=1", "logger=tensorboard")
    installed = importlib.util.find_spec("tensorboard") is not None
    assert (tmp_path / "tensorboard").is_dir() if installed else "tensorboard package is not installed" in caplog.text
    assert read_json(tmp_path / "summary.json")["epochs_completed"] == 1


def test_ema_is_evaluated_and_saved(tmp_path: Path) -> None:
    run(tmp_path, "epochs=1", "ema.enabled=true", "ema.decay=0.5")
    metrics = read_json_lines(tmp_path / "metrics.jsonl")[0]
    assert {"ema_top1", "ema_top5", "ema_val_loss"} <= set(metrics)
    ckpt = load(tmp_path / "last.pth")
    assert ckpt["ema"].keys() == ckpt["model"].keys()
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])


def test_mixup_cutmix_and_randaugment_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixup/CutMix mixes the batches of epoch 1 and stops at ``aug.mixup_off_epoch``; the targets it hands the loss
    are soft (mixed) labels."""
    calls: list[tuple[bool, bool]] = []
    original = Mixup.__call__

    def spy(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, target = original(self, x, target)
        calls.append((self.mixup_enabled, bool((target.max(dim=1).values < 1 - 1e-6).any())))
        return x, target

    monkeypatch.setattr(Mixup, "__call__", spy)
    overrides = ["aug=deit", "aug.hflip=0.0", "aug.mixup_off_epoch=1", "epochs=2", "data.in_chans=3"]
    run(tmp_path, *overrides, "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]")
    assert read_json(tmp_path / "summary.json")["epochs_completed"] == 2
    assert [enabled for enabled, _ in calls] == [True] * 6 + [False] * 6  # 6 batches an epoch, off from epoch 2
    assert all(mixed for _, mixed in calls[:6])


def test_grad_accumulation_clipping_layer_decay_and_checkpointing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each option is seen doing its job: one update per 2 batches, every update clipped to norm 1, per-layer lr
    scales in the optimizer, blocks recomputed in the backward pass, deterministic algorithms on."""
    import mixerzoo.models.backbone as backbone

    clips: list[tuple[float, bool]] = []
    clip = loop.dispatch_clip_grad

    def clip_spy(parameters, value: float, mode: str = "norm", **kwargs: Any) -> None:
        params = [p for p in parameters if p.grad is not None]
        clip(params, value, mode=mode, **kwargs)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        clips.append((norm.item(), torch.are_deterministic_algorithms_enabled()))

    monkeypatch.setattr(loop, "dispatch_clip_grad", clip_spy)
    recomputed: list[str] = []
    for fn in ("checkpoint", "checkpoint_seq"):
        original = getattr(backbone, fn)
        monkeypatch.setattr(backbone, fn, lambda *a, _f=original, _n=fn, **k: recomputed.append(_n) or _f(*a, **k))
    overrides = ["optim.grad_accum_steps=2", "optim.clip_grad=1.0", "optim.layer_decay=0.8"]
    run(tmp_path, "epochs=1", *overrides, "runtime.grad_checkpointing=true", "runtime.deterministic=true")
    ckpt = load(tmp_path / "last.pth")
    assert ckpt["global_step"] == 3  # 6 batches / 2
    assert len(clips) == 3 and all(norm <= 1.0 + 1e-4 and deterministic for norm, deterministic in clips)
    scales = sorted({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]})
    assert len(scales) > 2 and scales[-1] == 1.0 and scales[0] < 0.8**2
    assert recomputed  # the stages ran their blocks under activation checkpointing


@pytest.mark.parametrize(("optimizer", "state_key"), [("lamb", "exp_avg_sq"), ("sgd", "momentum_buffer")])
def test_other_optimizers(tmp_path: Path, optimizer: str, state_key: str) -> None:
    run(tmp_path, "epochs=1", f"optim={optimizer}", "sched=constant")
    assert read_json(tmp_path / "summary.json")["epochs_completed"] == 1
    state = load(tmp_path / "last.pth")["optimizer"]["state"]
    assert state and all(state_key in s for s in state.values())  # the optimizer asked for is the one that stepped


def test_eval_only_reports_the_checkpoint(tmp_path: Path) -> None:
    run(tmp_path / "train", "epochs=1", "ema.enabled=true")
    final = read_json(tmp_path / "train" / "summary.json")
    top1 = run(tmp_path / "eval", "eval_only=true", f"resume={tmp_path / 'train' / 'last.pth'}", "ema.enabled=true")
    result = read_json(tmp_path / "eval" / "eval.json")
    assert result["ema_top1"] == pytest.approx(final["final_top1"]) and top1 == result["top1"]
    assert result["top1"] == pytest.approx(final["final_top1_model"]) and "top5" in result
    run(tmp_path / "eval2", "eval_only=true", f"checkpoint={tmp_path / 'train' / 'best.pth'}")
    assert "top1" in read_json(tmp_path / "eval2" / "eval.json")


class NanAfter(nn.Module):
    """Wraps a model; its training forward returns NaN from call ``after + 1`` on (a diverging run)."""

    def __init__(self, model: nn.Module, after: int) -> None:
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "build_model", lambda spec, data: NanAfter(build_model(spec, data), after=6 + 2))
    with pytest.raises(FloatingPointError, match=r"Loss is nan at epoch 2, step 3 of 6.*last good checkpoint"):
        run(tmp_path, "epochs=2")
    ckpt = load(tmp_path / "last.pth")
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 6  # epoch 1's checkpoint, untouched
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_and_resumes(tmp_path: Path) -> None:
    cmd = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "batch_size=8", "epochs=2", "logger.log_interval=1"]
    cmd += ["limit_train_batches=40", "logger.progress_bar=false", "runtime.num_threads=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    deadline = time.time() + 120
    for raw in proc.stdout:  # wait until training is under way, then "preempt" it
        lines.append(raw.decode())
        if "step 5/" in lines[-1] or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    log = "".join(lines) + out.decode()
    assert proc.returncode == 0, log
    assert "SIGTERM received" in log and "checkpoint written" in log
    ckpt = load(tmp_path / "last.pth")
    assert ckpt["epoch"] == 0 and 5 * 8 <= ckpt["samples_in_epoch"] < 40 * 8, log  # mid-epoch, after a whole step
    resumed = subprocess.run(
        [*cmd, "resume=auto"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert read_json(tmp_path / "summary.json")["epochs_completed"] == 2
    assert load(tmp_path / "last.pth")["global_step"] == 2 * 40  # no step lost or repeated


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown model .resnet_nonexistent.*python -m mixerzoo models"):
        run(tmp_path, "model=timm", "model.name=resnet_nonexistent")


def test_missing_or_empty_data_root_says_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*train/<class_name>"):
        run(tmp_path, "data=imagenet", f"data.root={tmp_path / 'nope'}")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"(?s)holds no images.*val/<class_name>"):
        run(tmp_path, "data=imagenet", f"data.root={tmp_path / 'empty'}")


@pytest.mark.slow
def test_cli_typo_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "optim.lrr=0.1"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Key 'lrr' not in 'OptimConfig'" in result.stderr


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny ImageFolder tree: train/ and val/ with two classes of random 40x48 PNGs."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4)):
        for label in ("cat", "dog"):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / label / f"{i}.png")
    return tmp_path / "data"


def test_image_folder_dataset_trains(tmp_path: Path, image_folder: Path) -> None:
    """The ImageNet path (timm create_dataset over an ImageFolder tree) with the DeiT augmentation recipe."""
    overrides = ["data=folder", f"data.root={image_folder}", "data.num_classes=2", "data.img_size=32"]
    run(tmp_path / "run", *overrides, "data.num_workers=0", "batch_size=8", "epochs=1", "aug=deit")
    assert read_json(tmp_path / "run" / "summary.json")["epochs_completed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["poolformer_s12", "caformer_s18"])
def test_paper_experiment_runs_end_to_end(tmp_path: Path, image_folder: Path, experiment: str) -> None:
    """A paper recipe (AdamW or LAMB, per-epoch cosine with warmup, RandAugment, Mixup/CutMix, random
    erasing, drop path) for a couple of steps on CPU, at 64 pixels on the tiny folder."""
    overrides = [f"experiment={experiment}", "runtime=cpu", f"data.root={image_folder}", "data.num_classes=2"]
    overrides += ["data.img_size=64", "data.num_workers=0", "batch_size=4", "optim.grad_accum_steps=2"]
    run(tmp_path / "run", *overrides, "epochs=1", "sched.cooldown_epochs=0", "limit_train_batches=4")
    summary = read_json(tmp_path / "run" / "summary.json")
    assert summary["epochs_completed"] == 1 and summary["global_batch"] == 8
    assert load(tmp_path / "run" / "last.pth")["config"]["aug"]["auto_augment"] == "rand-m9-mstd0.5-inc1"


def test_fake_data_any_resolution(tmp_path: Path) -> None:
    run(tmp_path, "data=fake", "data.img_size=64", "data.num_classes=5", "data.num_workers=0", "epochs=1")
    assert read_json(tmp_path / "summary.json")["train_images_per_sec"] > 0


def test_digits_split_is_fixed_and_disjoint() -> None:
    train_set, val_set = DigitsDataset("train"), DigitsDataset("val")
    assert (len(train_set), len(val_set)) == (1437, 360)
    assert np.bincount(val_set.targets).min() >= 35  # stratified: every class in validation
    again = DigitsDataset("val")
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(val_set.images, again.images))
    train_pixels = {np.asarray(img).tobytes() for img in train_set.images}
    assert sum(np.asarray(img).tobytes() in train_pixels for img in val_set.images) <= 2  # sklearn has 1 duplicate


@pytest.mark.skipif(int(PIL.__version__.split(".")[0]) < 13, reason="the crash is specific to Pillow >= 13")
def test_randaugment_standard_recipe_works_with_pillow13() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="bits"):
        ImageOps.posterize(img, 0)  # what timm's PosterizeIncreasing asks for at magnitude 10
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name](img, 0)  # patched by training.data: keeps 1 bit instead
    transform = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic")
    for _ in range(2000):  # unpatched, about 1 in 1000 draws crashed
        transform(img)
