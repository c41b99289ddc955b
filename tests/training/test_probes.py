"""The capability probes: deterministic per (probe, seed, split, index), balanced, labels that mean what they say
(read back from the pixels by decoders written independently of the generators), solvable by a model with the
capability and not by one without it; the isotropic backbone and ``sweep=probes`` compose for every mixer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from mixerzoo.mixers import list_mixers
from mixerzoo.training import probes as pr
from mixerzoo.training.config import register_configs
from mixerzoo.training.data import create_datasets

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()
DECODE_COUNT = 200  # images per probe whose label is read back from the pixels


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def tiles(image: np.ndarray) -> np.ndarray:
    """(8, 8, 4, 4) binary cells, cut with explicit slicing (not ``probes.cells``)."""
    on = image > 127
    return np.array([[on[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] for c in range(8)] for r in range(8)])


def decode_longrange(image: np.ndarray) -> int:
    inked = [t for row in tiles(image) for t in row if t.any()]
    assert len(inked) == 2
    return int(np.array_equal(inked[0], inked[1]))


def decode_symmetry(image: np.ndarray) -> int:
    return int(np.array_equal(image, image[:, ::-1]))


def decode_recall(image: np.ndarray) -> int:
    """The query is the one cell whose bottom half is a checkerboard; its value is the bottom half of the other cell
    with the same top half; the value's class is its rank among the values' patterns (the generator's dictionary)."""
    grid = tiles(image)
    checker = np.add.outer(np.arange(2), np.arange(4)) % 2 == 0
    inked = [(r, c) for r in range(8) for c in range(8) if grid[r, c].any()]
    query = [rc for rc in inked if np.array_equal(grid[rc][2:], checker)]
    assert len(inked) == 3 and len(query) == 1
    match = [rc for rc in inked if rc != query[0] and np.array_equal(grid[rc][:2], grid[query[0]][:2])]
    assert len(match) == 1
    values = pr.dictionary("values")[:-1]
    return int(next(i for i, v in enumerate(values) if np.array_equal(grid[match[0]][2:], v)))


def decode_count(image: np.ndarray) -> int:
    """Bars are horizontal runs of inked cells: 3 runs -> 0, 4 runs -> 1; always 8 inked cells."""
    inked = tiles(image).any(axis=(2, 3))
    runs = sum(int(row[0]) + int(np.sum(row[1:] & ~row[:-1])) for row in inked)
    assert inked.sum() == 8 and runs in (3, 4)
    return runs - 3


DECODERS = {"longrange": decode_longrange, "symmetry": decode_symmetry, "recall": decode_recall, "count": decode_count}


def test_every_probe_has_a_decoder() -> None:
    assert set(DECODERS) == set(pr.PROBES) and len(pr.PROBES) >= 4


@pytest.mark.parametrize("name", list(pr.PROBES))
@pytest.mark.parametrize("split", ["train", "val"])
def test_labels_read_back_from_the_pixels(name: str, split: str) -> None:
    images, labels = pr.generate(name, DECODE_COUNT, seed=1, split=split)
    decoded = [DECODERS[name](image) for image in images]
    assert decoded == labels.tolist()


@pytest.mark.parametrize("name", list(pr.PROBES))
def test_images_are_deterministic_per_seed_split_and_index(name: str) -> None:
    images, labels = pr.generate(name, 8, seed=3, split="train")
    again, _ = pr.generate(name, 4, seed=3, split="train", start=4)
    assert np.array_equal(images[4:], again)  # image i depends on i only
    other_seed, _ = pr.generate(name, 8, seed=4, split="train")
    val, _ = pr.generate(name, 8, seed=3, split="val")
    assert not any(np.array_equal(images[i], other_seed[i]) or np.array_equal(images[i], val[i]) for i in range(8))
    assert labels.tolist() == [i % pr.PROBES[name].num_classes for i in range(8)]
    assert images.shape == (8, 32, 32) and images.dtype == np.uint8


@pytest.mark.parametrize("name", list(pr.PROBES))
def test_classes_are_balanced_and_the_ink_does_not_tell_them_apart(name: str) -> None:
    """Exactly balanced labels; and the amount of ink, the cheapest shortcut, has (nearly) the same mean in every
    class (within 5 % of the overall mean)."""
    images, labels = pr.generate(name, 800, seed=0, split="train")
    k = pr.PROBES[name].num_classes
    assert np.bincount(labels).tolist() == [800 // k] * k
    ink = images.reshape(len(images), -1).sum(1) / 255
    means = [ink[labels == c].mean() for c in range(k)]
    assert max(means) - min(means) < 0.05 * ink.mean()


def test_longrange_cells_are_far_apart() -> None:
    images, _ = pr.generate("longrange", 100, seed=0)
    for image in images:
        where = np.argwhere(tiles(image).any(axis=(2, 3)))
        assert np.abs(where[0] - where[1]).max() >= 5


def test_dictionaries_have_their_stated_sizes_and_distances() -> None:
    for name, count, distance in (("longrange", 8, 6), ("keys", 8, 4), ("values", 3, 4)):
        patterns = pr.dictionary(name).reshape(count, -1)
        gaps = [(a != b).sum() for i, a in enumerate(patterns) for b in patterns[i + 1 :]]
        assert min(gaps) >= distance
        assert len(set(patterns.sum(1).tolist())) == 1  # equal ink
    symmetric = pr.dictionary("symmetry")
    assert np.array_equal(symmetric, symmetric[:, :, ::-1]) and len({p.tobytes() for p in symmetric}) == 4


def test_dataset_is_cached_and_read_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pr.ProbeDataset("recall", "val", 12, cache_dir=tmp_path)
    assert ds.targets == [i % 2 for i in range(12)] and len(list(tmp_path.glob("*.npy"))) == 1

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached split should have been loaded")

    monkeypatch.setattr(pr, "generate", no_generation)
    fewer = pr.ProbeDataset("recall", "val", 8, cache_dir=tmp_path, in_chans=3)
    assert np.array_equal(fewer.images, ds.images[:8])
    img, label = fewer[5]
    assert img.mode == "RGB" and img.size == (32, 32) and label == 1


def test_unknown_probe_and_wrong_sizes_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="longrange, symmetry"):
        pr.generate("parity", 2)
    cfg = compose_train("data=probe_count", "aug=none", "data.img_size=64")
    with pytest.raises(ValueError, match=r"data\.img_size=32"):
        create_datasets(cfg.data, cfg.aug)


@pytest.mark.parametrize("name", list(pr.PROBES))
def test_data_probe_builds_from_its_config(name: str) -> None:
    cfg = compose_train(f"data=probe_{name}", "aug=none")
    train_ds, val_ds = create_datasets(cfg.data, cfg.aug)
    probe = pr.PROBES[name]
    assert (len(train_ds), len(val_ds)) == (probe.train_size, probe.val_size)
    image, label = train_ds[1]
    assert tuple(image.shape) == (1, 32, 32) and label == 1 and int(image.max()) == 255  # uint8: normalised later


# --- the isotropic backbone and the sweep -----------------------------------------------------------------------


@pytest.mark.parametrize("mixer", list_mixers())
def test_every_mixer_builds_in_isoformer_and_keeps_the_8x8_grid(mixer: str) -> None:
    import timm

    model = timm.create_model("isoformer_tiny", mixer=mixer, num_classes=4, img_size=32, in_chans=1)
    (features,) = model.forward_intermediates(torch.zeros(2, 1, 32, 32), indices=[3], intermediates_only=True)
    assert tuple(features.shape) == (2, 32, 8, 8)
    assert tuple(model(torch.zeros(2, 1, 32, 32)).shape) == (2, 4)


def test_identity_isoformer_is_a_bag_of_patches() -> None:
    """No token mixing but the mixer: with ``identity``, shuffling the cells of an image leaves the logits unchanged
    (the stem's patches do not overlap, the norms are per token, the head averages)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("isoformer_tiny", mixer="identity", num_classes=2, in_chans=1).eval()
    images, _ = pr.generate("recall", 4, seed=0)
    x = torch.from_numpy(images).float()[:, None] / 255
    order = torch.randperm(64)
    shuffled = x.reshape(4, 1, 8, 4, 8, 4).permute(0, 1, 2, 4, 3, 5).reshape(4, 1, 64, 4, 4)[:, :, order]
    shuffled = shuffled.reshape(4, 1, 8, 8, 4, 4).permute(0, 1, 2, 4, 3, 5).reshape(4, 1, 32, 32)
    assert not torch.equal(shuffled, x)
    torch.testing.assert_close(model(shuffled), model(x), atol=1e-5, rtol=1e-5)
    pooling = timm.create_model("isoformer_tiny", mixer="pooling", num_classes=2, in_chans=1).eval()
    assert not torch.allclose(pooling(shuffled), pooling(x), atol=1e-4)  # a mixer breaks the bag


def test_probes_sweep_lists_every_registered_token_mixer_and_every_probe() -> None:
    import yaml

    sweep = yaml.safe_load((CONFIG_DIR / "sweep" / "probes.yaml").read_text())
    params = sweep["hydra"]["sweeper"]["params"]
    assert params["model.mixer"].split(",") == list_mixers()
    assert params["data"].split(",") == [f"probe_{name}" for name in pr.PROBES]
    assert params["seed"].split(",") == ["0", "1", "2"]


@pytest.mark.parametrize("mixer", list_mixers())
def test_probes_sweep_composes_and_builds_for_every_mixer(mixer: str) -> None:
    from mixerzoo.models import build_model

    cfg = compose_train("sweep=probes", f"model.mixer={mixer}", "data=probe_recall")
    model = build_model(cfg.model, cfg.data)
    assert tuple(model(torch.zeros(1, 1, 32, 32)).shape) == (1, 2)


def test_a_probe_job_runs_end_to_end_in_the_smoke_preset(tmp_path: Path) -> None:
    """``debug=smoke`` swaps in the digits set by design; the probe's data keys given after it bring the probe back,
    and ``epochs=1`` the smoke preset's single epoch (the sweep preset comes after it and sets the screen's epochs):
    one epoch of two steps of 8 images, one val batch."""
    from mixerzoo import train

    probe = ["data.name=probe_longrange", "data.num_classes=2", "data.in_chans=1", "data.mean=[0.0]", "data.std=[1.0]"]
    cfg = compose_train(
        "sweep=probes",
        "debug=smoke",
        *probe,
        "epochs=1",
        f"output_dir={tmp_path}",
        "runtime.num_threads=1",
        "data.cache_dir=null",
    )
    assert (cfg.model.name, cfg.epochs, cfg.limit_train_batches, cfg.runtime.device) == ("isoformer_tiny", 1, 2, "cpu")
    train.run(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and 0.0 <= summary["final_top1"] <= 100.0


# --- solvable with the capability, not without it ---------------------------------------------------------------


def fit(name: str, mixer: str, images: int, lr: float = 3e-3, val: int = 1000, seed: int = 0, batch: int = 32) -> float:
    """Train ``isoformer_tiny`` with ``mixer`` on ``images`` training images of probe ``name`` (the screen's recipe
    in a plain loop: batch 32, AdamW, warmup + cosine); val accuracy in %."""
    import timm

    torch.manual_seed(seed)
    probe = pr.PROBES[name]
    x, y = pr.generate(name, min(images, probe.train_size), split="train")
    xv, yv = pr.generate(name, val, split="val")
    x, xv = (torch.from_numpy(a).float()[:, None] / 255 for a in (x, xv))
    y, yv = torch.from_numpy(y), torch.from_numpy(yv)
    model = timm.create_model("isoformer_tiny", mixer=mixer, num_classes=probe.num_classes, in_chans=1)
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.05)
    steps = images // batch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / (steps / 10)) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(x), generator=generator) for _ in range(math.ceil(images / len(x)))])
    model.train()
    for step in range(steps):
        idx = order[step * batch : (step + 1) * batch]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        return (model(xv).argmax(1) == yv).float().mean().item() * 100


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "mixer"), [("recall", "attention"), ("symmetry", "strip_mlp"), ("count", "strip_mlp")]
)
def test_a_capable_mixer_solves_the_probe_within_the_screen_budget(name: str, mixer: str) -> None:
    """One epoch of the screen's 8000 images (a third of its budget) is enough for a mixer with the capability:
    >= 95 %."""
    assert fit(name, mixer, 8000) >= 95.0


def test_identity_mixing_stays_at_chance_on_longrange() -> None:
    """No token mixing, no comparison of two tokens: near 50 % after 4000 images (the head's sum of per-token
    features cannot tell "a = b", see training/probes.py)."""
    assert abs(fit("longrange", "identity", 4000) - 50.0) < 4.0
