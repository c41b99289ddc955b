"""tools/erf.py (effective receptive fields) and tools/plots.py (figures from the CSV tables)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mixerzoo import MetaFormer
from mixerzoo.tools import erf


def one_block(mixer: str) -> MetaFormer:
    """One stage of one block on a 4x4 patchify stem: token (i, j) sees pixels 4i..4i+3 before the mixer. LayerNorm
    blocks (per token), so nothing but the mixer moves information between tokens."""
    return MetaFormer(
        depths=[1],
        dims=[16],
        mixer=mixer,
        block={"name": "metaformer", "norm": "layernorm"},
        stem={"name": "conv", "kernel_size": 4, "stride": 4, "padding": 0},
        num_classes=0,
        in_chans=1,
        img_size=32,
    )


@pytest.mark.parametrize(("mixer", "first", "last"), [("identity", 16, 19), ("pooling", 12, 23)])
def test_local_mixer_erf_is_confined_to_its_theoretical_receptive_field(mixer: str, first: int, last: int) -> None:
    """The centre token (4, 4) of an 8x8 grid: identity sees its own 4x4 patch, 3x3 pooling the 3x3 patches around
    it (pixels 12..23); outside, the gradient is exactly 0, inside it is not."""
    torch.manual_seed(0)
    field = erf.effective_receptive_field(one_block(mixer), torch.randn(4, 1, 32, 32), level=0)
    inside = torch.zeros_like(field, dtype=torch.bool)
    inside[first : last + 1, first : last + 1] = True
    assert field[~inside].abs().max() == 0
    assert (field[inside] > 0).all()


def test_attention_erf_is_global() -> None:
    torch.manual_seed(0)
    field = erf.effective_receptive_field(one_block("attention"), torch.randn(4, 1, 32, 32), level=0)
    assert (field > 0).all()
    _, r90 = erf.mass_radii(field)
    pooling = erf.effective_receptive_field(one_block("pooling"), torch.randn(4, 1, 32, 32), level=0)
    assert r90 > erf.mass_radii(pooling)[1] and r90 > 12


def test_trained_maps_use_the_images_the_run_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --run, the images come from the run's own Pathfinder difficulty and seed (not a fixed default), and both
    the init and the trained model of the mixer are measured on them; --difficulty overrides the difficulty."""
    from omegaconf import OmegaConf

    overrides = ["model=metaformer_tiny", "model.mixer=pooling", "data=pathfinder", "output_dir=/tmp/unused"]
    cfg = erf.compose_train_config([*overrides, "data.pathfinder_difficulty=easy", "data.pathfinder_seed=3"])
    job = tmp_path / "0_job"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, job / ".hydra" / "config.yaml")
    torch.save({"model": erf.build_for(cfg).state_dict()}, job / "last.pth")
    asked = []

    def fake_images(count: int, img_size: int, difficulty: str, seed: int) -> torch.Tensor:
        asked.append((difficulty, seed))
        return torch.randn(count, 1, img_size, img_size)

    monkeypatch.setattr(erf, "pathfinder_images", fake_images)
    records = erf.compute(["identity", "pooling"], 32, [0], 2, run_dir=str(tmp_path))  # identity: not in the run
    assert asked == [("easy", 3)] and [r["state"] for r in records] == ["init", "init", "trained"]
    erf.compute(["pooling"], 32, [0], 2, run_dir=str(tmp_path), difficulty="hard")
    assert asked[-1] == ("hard", 3)


def test_mass_radii_of_known_maps() -> None:
    point = np.zeros((9, 9))
    point[4, 4] = 1.0
    assert erf.mass_radii(point) == [0.0, 0.0]
    square = np.zeros((9, 9))
    square[3:6, 3:6] = 1.0  # 9 pixels: the centre, 4 at distance 1, 4 at sqrt(2)
    assert erf.mass_radii(square, (0.5, 0.9)) == [1.0, pytest.approx(2**0.5)]


def write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < path.stat().st_size < 400_000


def test_plots_are_written_without_a_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from mixerzoo.tools import plots

    monkeypatch.delenv("DISPLAY", raising=False)
    bench = [
        {"model": f"config:metaformer_s12@mixer={m}", "img_size": s, "gmacs": g * (s / 224) ** e, "infer_img_s": 3 / g}
        for m, g, e in (("pooling", 1.8, 2), ("attention", 5.6, 3))
        for s in (224, 448, 896)
    ]
    bench[-1]["infer_img_s"] = ""  # not timed (too many GMACs): no point
    assert_png(plots.cost([write_csv(tmp_path / "bench.csv", bench)], tmp_path / "cost.png", note="noisy CPU"))
    jobs = [
        {"mixer": m, "img_size": s, "seed": seed, "gmacs": g, "train_img_s": 500 / g, "best_top1": 60 + 10 * g + seed}
        for m, g in (("pooling", 0.004), ("attention", 0.006))
        for s in (32, 64)
        for seed in (0, 1)
    ]
    assert_png(plots.accuracy(write_csv(tmp_path / "results.csv", jobs), tmp_path / "accuracy.png"))
    for i, mixer in enumerate(("pooling", "attention")):
        job = tmp_path / "run" / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"model: {{mixer: {mixer}}}\ndata: {{img_size: 32}}\n")
        write_csv(job / "metrics.csv", [{"epoch": e, "top1": 50 + e * (i + 1)} for e in range(1, 4)])
    assert_png(plots.curves(tmp_path / "run", tmp_path / "curves.png"))
    records = [
        dict(mixer=m, state=s, level=0, r50=2.0, r90=5.0, map=np.random.rand(32, 32).tolist())
        for m in ("pooling", "attention")
        for s in ("init", "trained")
    ]
    erf.plot(records, tmp_path / "erf.png", 32)
    assert_png(tmp_path / "erf.png")


def test_a_mixer_has_one_colour_in_every_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The accuracy scatter styles series by mixer, not by their position among all (size, mixer) groups."""
    pytest.importorskip("matplotlib")
    from mixerzoo.tools import plots

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out: figures.append(fig) or Path(out))
    jobs = [
        {"mixer": m, "img_size": s, "seed": 0, "gmacs": 0.004, "train_img_s": 100, "final_top1": 60}
        for m, s in (("aff", 32), ("pooling", 32), ("sepconv", 32), ("pooling", 64), ("sepconv", 64))
    ]
    plots.accuracy(write_csv(tmp_path / "results.csv", jobs), tmp_path / "accuracy.png")
    colours: dict[str, set] = {}
    for ax in figures[0].axes:
        for container, label in zip(ax.containers, ax.texts, strict=True):
            colours.setdefault(label.get_text(), set()).add(tuple(container.lines[0].get_color()))
    assert set(colours) == {"aff", "pooling", "sepconv"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len(set().union(*colours.values())) == 3


def test_plot_titles_and_chance_level_come_from_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10-class digits sweep is titled "Digits-32" with its chance line at 10 %, not "Pathfinder-32" at 50 %;
    the accuracy plot reads collect_results.py's per-job CSV and its --by-mixer CSV alike."""
    pytest.importorskip("matplotlib")
    from mixerzoo.tools import plots

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, out: figures.append(fig) or Path(out))
    jobs = [
        {"mixer": m, "data": "digits", "img_size": 32, "seed": seed, "gmacs": g, "train_img_s": 100, "final_top1": t}
        for m, g, t in (("pooling", 0.004, 90.0), ("sepconv", 0.006, 96.0))
        for seed in (0, 1)
    ]
    averaged = [
        {"model": "metaformer_tiny", "mixer": m, "data": "digits", "img_size": 32, "gmacs": g}
        | {"train_img_s_mean": 100, "final_top1_mean": t, "final_top1_std": 1.5, "jobs": 2}
        for m, g, t in (("pooling", 0.004, 90.0), ("sepconv", 0.006, 96.0))
    ]
    for rows in (jobs, averaged):
        plots.accuracy(write_csv(tmp_path / "results.csv", rows), tmp_path / "accuracy.png")
        axes = figures.pop().axes
        assert [ax.get_title() for ax in axes] == ["Digits-32", "Digits-32"]
        assert sorted(text.get_text() for text in axes[0].texts) == ["pooling", "sepconv"]
    for i, mixer in enumerate(("pooling", "sepconv")):
        job = tmp_path / "run" / f"{i}_job"
        (job / ".hydra").mkdir(parents=True)
        config = f"model: {{mixer: {mixer}}}\ndata: {{name: digits, img_size: 32, num_classes: null}}\n"
        (job / ".hydra" / "config.yaml").write_text(config)
        (job / "summary.json").write_text('{"num_classes": 10}')
        write_csv(job / "metrics.csv", [{"epoch": e, "top1": 50 + e * (i + 1)} for e in range(1, 4)])
    plots.curves(tmp_path / "run", tmp_path / "curves.png")
    (ax,) = figures.pop().axes
    assert ax.get_title().startswith("Digits-32:")
    chance = [line for line in ax.lines if line.get_label().startswith("chance")]
    assert [line.get_ydata()[0] for line in chance] == [10.0]
