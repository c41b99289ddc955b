"""The Pathfinder generator: deterministic per (seed, split, index), balanced, labels that mean what they say."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mixerzoo.training import pathfinder as pf
from mixerzoo.training.config import register_configs
from mixerzoo.training.data import create_datasets

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
register_configs()


def snake(start: tuple[float, float], heading_deg: float, paddles: int, geom: pf.PathfinderGeometry) -> np.ndarray:
    """A straight snake of ``paddles`` dashes: (paddles, 2, 2) start/end points."""
    direction = np.array([np.sin(np.deg2rad(heading_deg)), np.cos(np.deg2rad(heading_deg))])
    starts = np.asarray(start) + geom.step * np.arange(paddles)[:, None] * direction
    return np.stack([starts, starts + geom.paddle_length * direction], axis=1)


def connected(scene: pf.Scene, geom: pf.PathfinderGeometry) -> bool:
    drawing = pf.render(scene, geom, antialias=4, downsample=False)
    return pf.dots_connected(drawing, scene.markers, scale=4, reach=1.5 * geom.gap)


def test_a_dashed_path_joining_the_dots_is_connected_and_a_broken_one_is_not() -> None:
    """Constructed scenes: one dashed curve from marker to marker is connected; the same dots with the curve cut by
    a blank wider than the gaps (two snakes, each ending at one dot) are not."""
    geom = pf.pathfinder_geometry(32, "hard")
    joined = snake((16.0, 4.0), 0.0, 8, geom)
    a, b = joined[0, 0], joined[-1, 1]
    assert connected(pf.Scene([joined], (a, b), 1), geom)
    first, second = joined[:3], joined[5:]  # two paddles missing: a 7-px hole against 1-px gaps
    assert not connected(pf.Scene([first, second], (a, b), 0), geom)
    elsewhere = snake((6.0, 4.0), 0.0, 8, geom)  # the second dot on a parallel snake 10 px away
    assert not connected(pf.Scene([joined, elsewhere], (a, elsewhere[-1, 1]), 0), geom)


@pytest.mark.parametrize(("img_size", "count"), [(32, 16), (64, 4)])
def test_generated_labels_match_the_pixels(img_size: int, count: int) -> None:
    """In generated scenes the dots are joined by strokes exactly when the label is 1, and the markers sit on the
    target snakes' ends: both ends of one (label 1) or the start of one and the end of the other (label 0)."""
    geom = pf.pathfinder_geometry(img_size, "hard")
    for index in range(count):
        label = index % 2
        scene = pf.sample_scene(np.random.default_rng([5, 0, index]), geom, label)
        starts = [s[0, 0] for s in scene.snakes[:2]]
        ends = [s[-1, 1] for s in scene.snakes[:2]]
        first = next(i for i in range(2) if np.allclose(scene.markers[0], starts[i]))
        second = next(i for i in range(2) if np.allclose(scene.markers[1], ends[i]))
        assert (first == second) == bool(label)
        assert connected(scene, geom) == bool(label), f"scene {index}"


def test_images_are_deterministic_per_seed_split_and_index() -> None:
    images, labels = pf.generate(6, 32, "hard", seed=3, split="train")
    again, _ = pf.generate(4, 32, "hard", seed=3, split="train")
    assert np.array_equal(images[:4], again)  # image i depends on i only, not on how many are made
    other_seed, _ = pf.generate(4, 32, "hard", seed=4, split="train")
    val, _ = pf.generate(4, 32, "hard", seed=3, split="val")
    assert not any(np.array_equal(images[i], other_seed[i]) or np.array_equal(images[i], val[i]) for i in range(4))
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_parallel_generation_gives_the_same_images_in_the_same_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pf, "MIN_PARALLEL_IMAGES", 8)  # spread even a small split over the processes
    count = 30  # chunks of 4 (count / (4 x processes), rounded up): 8 jobs, the last one partial
    serial = pf.generate(count, 16, "easy", seed=5, split="val")
    parallel = pf.generate(count, 16, "easy", seed=5, split="val", processes=2)
    assert np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])


def test_train_and_val_splits_share_no_image() -> None:
    train, _ = pf.generate(24, 32, "easy", seed=0, split="train")
    val, _ = pf.generate(24, 32, "easy", seed=0, split="val")
    assert len({im.tobytes() for im in train} & {im.tobytes() for im in val}) == 0


@pytest.mark.parametrize(("img_size", "paddles"), [(32, 5), (64, 11), (128, 14)])
def test_sizes_and_the_hard_contour_length_scale_with_the_image(img_size: int, paddles: int) -> None:
    """At 128 px the geometry is the original's (14 paddles of 11/300 of the side); smaller images keep each
    snake's share of the side with fewer, at least 3-px, paddle steps."""
    geom = pf.pathfinder_geometry(img_size, "hard")
    assert geom.contour_paddles == paddles and geom.num_distractors == 7
    assert geom.contour_paddles * geom.step == pytest.approx(0.513 * img_size, rel=0.12)
    images, _ = pf.generate(1, img_size, "hard")
    assert images.shape == (1, img_size, img_size) and images.dtype == np.uint8 and images.max() == 255


def test_dataset_is_balanced_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = pf.PathfinderDataset("val", 10, 32, "easy", seed=1, cache_dir=tmp_path)
    assert sum(ds.targets) == 5 and len(ds) == 10
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached split should have been loaded")

    monkeypatch.setattr(pf, "generate", no_generation)
    again = pf.PathfinderDataset("val", 10, 32, "easy", seed=1, cache_dir=tmp_path, in_chans=3)
    assert np.array_equal(again.images, ds.images)
    img, label = again[3]
    assert img.mode == "RGB" and img.size == (32, 32) and label == 1
    fewer = pf.PathfinderDataset("val", 6, 32, "easy", seed=1, cache_dir=tmp_path)  # the first 6 of the 10
    assert np.array_equal(fewer.images, ds.images[:6]) and fewer.targets == ds.targets[:6]


def test_data_pathfinder_builds_from_the_config() -> None:
    overrides = ["data=pathfinder", "data.pathfinder_train_size=4", "data.pathfinder_val_size=2", "aug=none"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    train_ds, val_ds = create_datasets(cfg.data, cfg.aug, seed=0)
    assert cfg.data.num_classes == 2 and (len(train_ds), len(val_ds)) == (4, 2)
    image, label = train_ds[1]
    assert tuple(image.shape) == (1, 32, 32) and label == 1


def test_unknown_difficulty_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="easy, medium, hard"):
        pf.pathfinder_geometry(32, "extreme")


@pytest.mark.parametrize("preset", ["pathfinder", "pathfinder_gpu"])
def test_pathfinder_sweeps_list_every_registered_token_mixer(preset: str) -> None:
    import yaml

    from mixerzoo.mixers import list_mixers

    sweep = yaml.safe_load((CONFIG_DIR / "sweep" / f"{preset}.yaml").read_text())
    assert sweep["hydra"]["sweeper"]["params"]["model.mixer"].split(",") == list_mixers()


def test_a_waiting_rank_stops_when_local_rank_0_reports_a_failure(tmp_path: Path) -> None:
    """Without the marker the other ranks would poll until the job's time limit; an older marker is ignored."""
    path = tmp_path / "pathfinder32_hard_seed0_train_8_v1.npy"
    stale = pf._failure_marker(path)
    stale.write_text("OSError: an earlier run's")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    def fail_later() -> None:
        time.sleep(0.3)
        pf._failure_marker(path).write_text("OSError: [Errno 28] No space left on device")

    threading.Thread(target=fail_later).start()
    with pytest.raises(RuntimeError, match=r"local rank 0 could not generate .*No space left on device"):
        pf._wait_for_cache(path, "pathfinder32_hard_seed0_train_", 8, poll_s=0.05)


def test_local_rank_0_leaves_a_failure_marker_when_it_cannot_make_the_cache(tmp_path: Path, monkeypatch) -> None:
    def out_of_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pf, "_node_ranks", lambda: (0, 2))
    monkeypatch.setattr(pf, "generate", out_of_space)
    with pytest.raises(OSError, match="No space left"):
        pf.PathfinderDataset("train", 8, img_size=32, cache_dir=tmp_path)
    (marker,) = tmp_path.glob("*.failed")
    assert "No space left on device" in marker.read_text()
