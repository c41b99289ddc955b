"""Pathfinder: are the two dots joined by one dashed curve? A procedural, download-free long-range image task.

Linsley, Kim, Veerabadran, Windolf, Serre, "Learning long-range spatial dependencies with horizontal gated-recurrent
units", NeurIPS 2018 (generator: drewlinsley/pathfinder, ``snakes2.py``); the image task of Long Range Arena (Tay et
al., ICLR 2021). This is our own implementation of the same design, in numpy + PIL:

1. Two *target* contours ("snakes") start ``seed_distance`` apart with random headings and grow one dash
   ("paddle") at a time (the original grows them in lock-step; we grow one, then the other, each retried from its
   start when it runs out of room, which needs far fewer draws). Each paddle turns by ``d`` from the previous one
   with probability proportional to ``cos(min(continuity * |d|, pi/2)) ** 2`` (the original's rule; continuity
   1.8 allows turns up to 50 degrees). The first paddle's heading is uniform among those with room.
2. ``num_distractors`` shorter distractor snakes (``distractor_paddles`` each) start anywhere there is room.
3. Two markers (discs): label 1 puts them on both ends of one target snake, label 0 on the start of one and the end
   of the other. The geometry is drawn before the label is looked at, so the two classes have the same distribution
   of everything (marker distance included) except which ends the markers sit on.
4. Nothing touches: every paddle keeps ``blank`` (twice the dash gap) of free space to every other snake, every
   marker and to its own snake beyond its two predecessors, and the space around all four target ends is kept
   free (only two of them get a marker). So a curve joins the dots exactly when the label is 1, at the pixel level
   too (``dots_connected`` checks a rendering).

Geometry relative to the original (300 x 300 canvas, paddle 5 px + 2 x margin 3 px = 11 px per paddle step,
thickness 2, marker radius 5, seed distance 27, contour lengths 6 / 9 / 14 paddles = ``curv_baseline`` /
``curv_contour_length_9`` / ``_14``, distractors of contour_length // 3 paddles, 30 // that many of them): each
snake keeps the original's length as a fraction of the image side (hard: 14 x 11 / 300 = 0.51 of the side; medium
0.33; easy 0.22), and the number of distractors is the original's. What cannot scale to 32 px is the dash itself
(the original's would be half a pixel long), so the paddle step is ``max(3 px, 11/300 of the side)``, two thirds
dash and one third gap, thickness and marker radius have floors of 1 and 1.5 px, and the number of paddles per
snake follows from the length (hard: 5 / 11 / 14 paddles at 32 / 64 / 128 px; 128 px is the original's geometry at
that scale). The original's single-paddle distractors (``use_single_paddles``) are off, as in its wrapper. LRA's
Pathfinder-32 is the hard setting, so that is the default.

Every image is a deterministic function of ``(seed, split, index)`` (numpy ``SeedSequence``), labels alternate with
the index (balanced exactly), and the train and val splits are different random streams of the same seed, so they
never share an image. ``PathfinderDataset`` keeps the split in memory as uint8 and, with ``cache_dir``, in an
``.npy`` file that later runs (e.g. the jobs of a sweep) load instead of generating again.

Under ``torchrun`` (an initialised ``torch.distributed`` group) with ``cache_dir``, local rank 0 of each node
generates a missing split (with all of ``processes``) and writes the cache; the node's other ranks wait for that
file and read it. Per node rather than rank 0 only, so a node-local ``cache_dir`` works too; on a shared file system
the nodes write identical files under unique temporary names and the last rename wins. The others poll for the
file instead of waiting at a barrier, whose timeout (10 min by default with NCCL) a large split can exceed. Without
``cache_dir`` every rank generates its own copy, sharing ``processes`` with the node's other ranks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image, ImageDraw
from timm.utils.distributed import world_info_from_env
from torch.utils.data import Dataset

from mixerzoo.training.atomic import atomic_write
from mixerzoo.training.data import register_dataset
from mixerzoo.training.images import GrayscaleArrayDataset

__all__ = [
    "DIFFICULTIES",
    "PathfinderDataset",
    "PathfinderGeometry",
    "Scene",
    "dots_connected",
    "generate",
    "pathfinder_geometry",
    "render",
    "sample_scene",
]

_logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # part of every cache file name: bump it when the images change
DIFFICULTIES = {"easy": 6, "medium": 9, "hard": 14}  # the original's contour lengths, in its 11-px paddle steps
SPLITS = {"train": 0, "val": 1}
_ORIGINAL_CANVAS, _ORIGINAL_STEP = 300.0, 11.0
_TURNS = np.deg2rad(np.arange(-90.0, 91.0, 5.0))  # candidate turns between consecutive paddles
_HEADINGS = np.deg2rad(np.arange(0.0, 360.0, 5.0))  # candidate headings of a snake's first paddle


@dataclass(frozen=True)
class PathfinderGeometry:
    """Sizes of one image's parts, in pixels of the ``img_size`` x ``img_size`` output (see the module docstring)."""

    img_size: int
    contour_paddles: int  # paddles per target snake
    distractor_paddles: int
    num_distractors: int
    step: float  # from the start of one paddle to the start of the next
    paddle_length: float  # the dash; the rest of the step is the gap
    thickness: float
    marker_radius: float
    seed_distance: float  # between the starts of the two target snakes
    continuity: float = 1.8

    @property
    def gap(self) -> float:
        return self.step - self.paddle_length

    @property
    def blank(self) -> float:
        """Least free space (edge to edge) between things that must not touch: twice the gap inside a snake."""
        return 2 * self.gap


def pathfinder_geometry(img_size: int, difficulty: str = "hard") -> PathfinderGeometry:
    """The geometry of Pathfinder-``img_size`` at ``difficulty`` (easy | medium | hard), scaled from the original."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"pathfinder: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}.")
    if img_size < 16:
        raise ValueError(f"pathfinder: img_size must be at least 16 px, got {img_size}.")
    scale = img_size / _ORIGINAL_CANVAS
    step = max(3.0, _ORIGINAL_STEP * scale)
    contour = DIFFICULTIES[difficulty]
    distractor = contour // 3  # the original: distractor_length = contour_length / 3 (Python 2 integer division)

    def paddles(original_paddles: int) -> int:  # same length as a fraction of the side, in our steps
        return max(1, round(original_paddles * _ORIGINAL_STEP * scale / step))

    thickness, marker_radius = max(1.0, 2 * scale), max(1.5, 5 * scale)
    blank = 2 * step / 3
    return PathfinderGeometry(
        img_size=img_size,
        contour_paddles=max(2, paddles(contour)),
        distractor_paddles=paddles(distractor),
        num_distractors=30 // distractor,
        step=step,
        paddle_length=2 * step / 3,
        thickness=thickness,
        marker_radius=marker_radius,
        seed_distance=max(27 * scale, 2 * marker_radius + blank + 0.5),
    )


@dataclass
class Scene:
    """One image before rendering: snakes as arrays of paddles ``(n, 2, 2)`` (start and end points as (y, x)),
    the first two the targets; the marker centres; the label (1: the markers are the ends of one snake)."""

    snakes: list[np.ndarray]
    markers: tuple[np.ndarray, np.ndarray]
    label: int


class _Occupancy:
    """Points already drawn (every half pixel along each paddle, plus the reserved marker discs) with their radius,
    snake and paddle index, to test new paddles for clearance. ``size`` marks a state to ``rollback`` to."""

    def __init__(self, capacity: int = 1024) -> None:
        self.points = np.empty((capacity, 2))
        self.radius = np.empty(capacity)
        self.snake = np.empty(capacity, dtype=np.int64)
        self.index = np.empty(capacity, dtype=np.int64)
        self.size = 0

    def add(self, points: np.ndarray, radius: float, snake: int, index: int) -> None:
        points = points.reshape(-1, 2)
        start, stop = self.size, self.size + len(points)
        if stop > len(self.radius):
            for name in ("points", "radius", "snake", "index"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.empty_like(old)]))
        self.points[start:stop], self.radius[start:stop] = points, radius
        self.snake[start:stop], self.index[start:stop] = snake, index
        self.size = stop

    def rollback(self, size: int) -> None:
        self.size = size

    def clear(self, points: np.ndarray, radius: float, blank: float, snake: int, index: int) -> np.ndarray:
        """For candidates ``points`` (K, m, 2), all within ``reach`` of ``points[0, 0]`` (the paddles start there):
        which keep ``blank`` free space to everything except the last two paddles of their own snake (and its start
        marker, for its first three paddles)."""
        n, centre = self.size, points[0, 0]
        extent = float(np.sqrt(((points - centre) ** 2).sum(-1).max()))
        reach = self.radius[:n] + (radius + blank)
        near = ((self.points[:n] - centre) ** 2).sum(-1) < (reach + extent) ** 2  # the rest cannot be too close
        near &= (self.snake[:n] != snake) | (self.index[:n] < index - 2)
        rows = np.flatnonzero(near)
        if rows.size == 0:
            return np.ones(points.shape[0], dtype=bool)
        close = ((points[:, :, None, :] - self.points[rows]) ** 2).sum(-1) < reach[rows] ** 2  # (K, m, rows)
        return ~close.any(axis=(1, 2))


@functools.lru_cache(maxsize=32)
def _tables(geom: PathfinderGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The turns a paddle may take with their continuity weights, and the offsets of a point every half pixel
    along a paddle (shaped to broadcast against (K, 1, 2) directions)."""
    weights = np.cos(np.minimum(geom.continuity * np.abs(_TURNS), np.pi / 2)) ** 2
    samples = max(3, math.ceil(geom.paddle_length * 2) + 1)
    along = np.linspace(0.0, geom.paddle_length, samples)[None, :, None]
    return _TURNS[weights > 1e-9], weights[weights > 1e-9], along


class _Snake:
    """A snake growing one paddle at a time under the continuity rule, avoiding everything in ``occupancy``."""

    def __init__(self, start: np.ndarray, heading: float, ident: int, geom: PathfinderGeometry) -> None:
        self.position, self.heading, self.ident, self.geom = start, heading, ident, geom
        self.paddles: list[np.ndarray] = []
        self.turns, self.weights, self.along = _tables(geom)

    def grow(self, rng: np.random.Generator, occupancy: _Occupancy) -> bool:
        geom, k = self.geom, len(self.paddles)
        if k == 0:  # a uniform heading among those with room (a 5-degree grid at a random offset)
            headings, weights = self.heading + _HEADINGS, np.ones(len(_HEADINGS))
        else:
            headings, weights = self.heading + self.turns, self.weights
        directions = np.stack([np.sin(headings), np.cos(headings)], axis=-1)
        points = self.position + self.along * directions[:, None, :]  # (K, m, 2)
        edge = geom.thickness / 2 + 0.5
        inside = ((points >= edge) & (points <= geom.img_size - edge)).all(axis=(1, 2))
        ok = inside & occupancy.clear(points, geom.thickness / 2, geom.blank, self.ident, k)
        cumulative = np.cumsum(np.where(ok, weights, 0.0))
        if cumulative[-1] <= 0:
            return False
        choice = min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), len(ok) - 1)
        occupancy.add(points[choice], geom.thickness / 2, self.ident, k)
        self.paddles.append(points[choice, [0, -1]])
        self.heading = float(headings[choice])
        self.position = self.position + geom.step * directions[choice]
        return True

    @property
    def tips(self) -> tuple[np.ndarray, np.ndarray]:
        return self.paddles[0][0], self.paddles[-1][1]


def _inside(point: np.ndarray, margin: float, size: int) -> bool:
    return bool(((point >= margin) & (point <= size - margin)).all())


def _target(
    rng: np.random.Generator, geom: PathfinderGeometry, occupancy: _Occupancy, start: np.ndarray, ident: int
) -> _Snake | None:
    """A target snake from ``start`` (a fresh heading on each of 8 tries) whose end has room for a marker, the end's
    disc then reserved; None if no try fits."""
    r, n = geom.marker_radius, geom.contour_paddles
    for _ in range(8):
        before = occupancy.size
        snake = _Snake(start, rng.uniform(-np.pi, np.pi), ident, geom)
        if all(snake.grow(rng, occupancy) for _ in range(n)):
            end = snake.tips[1]
            if _inside(end, r + 0.5, geom.img_size) and occupancy.clear(end[None, None], r, geom.blank, ident, n)[0]:
                occupancy.add(end, r, ident, n)
                return snake
        occupancy.rollback(before)
    return None


def _target_pair(rng: np.random.Generator, geom: PathfinderGeometry) -> tuple[_Occupancy, list[_Snake]] | None:
    """Two target snakes from starts ``seed_distance`` apart (the original grows them in lock-step, we one after the
    other, each retried from its start), all four ends kept free for a marker; None when they find no room."""
    size, r = geom.img_size, geom.marker_radius
    low, high = 0.18 * size, 0.82 * size  # the original seeds the first snake 2 x seed_distance (0.18) from the border
    first = rng.uniform(low, high, 2)
    angle = rng.uniform(-np.pi, np.pi)
    second = first + geom.seed_distance * np.array([np.sin(angle), np.cos(angle)])
    if not _inside(second, r + 0.5, size):
        return None
    occupancy = _Occupancy()
    occupancy.add(first, r, 0, 0)
    occupancy.add(second, r, 1, 0)
    snakes = []
    for ident, start in enumerate((first, second)):
        snake = _target(rng, geom, occupancy, start, ident)
        if snake is None:
            return None
        snakes.append(snake)
    return occupancy, snakes


def sample_scene(rng: np.random.Generator, geom: PathfinderGeometry, label: int, max_tries: int = 200) -> Scene:
    """One scene: the target pair (drawn again until it fits), the distractors that find room (4 tries each, as the
    original's ``max_distractor_contour_retrial``), the markers for ``label``."""
    for _ in range(max_tries):
        pair = _target_pair(rng, geom)
        if pair is not None:
            break
    else:
        raise RuntimeError(f"pathfinder: no room for two target snakes after {max_tries} tries ({geom}).")
    occupancy, targets = pair
    distractors: list[_Snake] = []
    edge = geom.thickness / 2 + 0.5
    for ident in range(2, 2 + geom.num_distractors):
        for _ in range(4):
            snake = _Snake(rng.uniform(edge, geom.img_size - edge, 2), rng.uniform(-np.pi, np.pi), ident, geom)
            before = occupancy.size
            if all(snake.grow(rng, occupancy) for _ in range(geom.distractor_paddles)):
                distractors.append(snake)
                break
            occupancy.rollback(before)
    origin = int(rng.integers(2))  # which target snake carries the start marker
    other = origin if label == 1 else 1 - origin
    markers = (targets[origin].tips[0], targets[other].tips[1])
    return Scene([np.stack(s.paddles) for s in (*targets, *distractors)], markers, int(label))


def render(scene: Scene, geom: PathfinderGeometry, antialias: int = 4, downsample: bool = True) -> np.ndarray:
    """The scene as a uint8 grey image, white on black: drawn ``antialias`` times larger with PIL and box-filtered
    down (``downsample=False`` returns the large drawing)."""
    scale = antialias
    canvas = Image.new("L", (geom.img_size * scale, geom.img_size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(geom.thickness * scale))
    for snake in scene.snakes:
        for (y0, x0), (y1, x1) in snake:
            draw.line([(x0 * scale, y0 * scale), (x1 * scale, y1 * scale)], fill=255, width=width)
    r = geom.marker_radius * scale
    for y, x in scene.markers:
        draw.ellipse([x * scale - r, y * scale - r, x * scale + r, y * scale + r], fill=255)
    if downsample:
        canvas = canvas.resize((geom.img_size, geom.img_size), Image.Resampling.BOX)
    return np.asarray(canvas, dtype=np.uint8)


def dots_connected(drawing: np.ndarray, markers: Sequence[np.ndarray], scale: float, reach: float) -> bool:
    """Whether the two markers lie on one chain of strokes in ``drawing`` (a rendering ``scale`` times the scene's
    coordinates), allowing gaps up to ``reach`` (in scene pixels) between strokes: the strokes are thickened by
    ``reach / 2`` and the markers' connected components compared. The label's meaning, checked on pixels."""
    from scipy import ndimage

    radius = max(1, math.ceil(reach * scale / 2))
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    ink = ndimage.binary_dilation(drawing > 127, structure=(yy**2 + xx**2) <= radius**2)
    components, _ = ndimage.label(ink)
    ids = [components[int(y * scale), int(x * scale)] for y, x in markers]
    return ids[0] != 0 and ids[0] == ids[1]


def _seed_sequence(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index])


def _generate_range(args: tuple[int, str, int, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    img_size, difficulty, seed, split, start, stop = args
    geom = pathfinder_geometry(img_size, difficulty)
    images = np.empty((stop - start, img_size, img_size), dtype=np.uint8)
    labels = np.arange(start, stop, dtype=np.int64) % 2
    for i, index in enumerate(range(start, stop)):
        images[i] = render(sample_scene(_seed_sequence(seed, split, index), geom, int(labels[i])), geom)
    return images, labels


MIN_PARALLEL_IMAGES = 1000  # fewer images are generated in this process: workers would cost more than they save


def generate(
    num_images: int,
    img_size: int = 32,
    difficulty: str = "hard",
    seed: int = 0,
    split: str = "train",
    processes: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``0 .. num_images - 1`` of a split as ``(uint8 (N, S, S), int64 (N,))``; ``processes > 1`` generates
    chunks in parallel (the same images: each depends on its index only)."""
    if split not in SPLITS:
        raise ValueError(f"pathfinder: split must be one of {', '.join(SPLITS)}, got {split!r}.")
    pathfinder_geometry(img_size, difficulty)  # validate before spawning anything
    if processes <= 1 or num_images < MIN_PARALLEL_IMAGES:
        return _generate_range((img_size, difficulty, seed, split, 0, num_images))
    chunk = math.ceil(num_images / (4 * processes))
    jobs = [(img_size, difficulty, seed, split, a, min(a + chunk, num_images)) for a in range(0, num_images, chunk)]
    with ProcessPoolExecutor(processes) as pool:
        parts = list(pool.map(_generate_range, jobs))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class PathfinderDataset(GrayscaleArrayDataset):
    """One split of Pathfinder-``img_size`` in memory (uint8), yielding ``(PIL image, label)``; ``targets`` lists the
    labels. With ``cache_dir`` the split is read from (or written to) an ``.npy`` file named after its parameters (a
    cached split with more images serves its first ``size``)."""

    def __init__(
        self,
        split: str = "train",
        size: int = 10000,
        img_size: int = 32,
        difficulty: str = "hard",
        seed: int = 0,
        in_chans: int = 1,
        cache_dir: str | os.PathLike | None = None,
        processes: int = 0,
        transform: Any = None,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(f"pathfinder: in_chans must be 1 or 3, got {in_chans}.")
        if size < 2:
            raise ValueError(f"pathfinder: a split needs at least 2 images (one per label), got {size}.")
        self.mode, self.transform = "L" if in_chans == 1 else "RGB", transform
        self.images = self._load_or_generate(split, size, img_size, difficulty, seed, cache_dir, processes)
        self.targets = [i % 2 for i in range(size)]

    @staticmethod
    def _load_or_generate(
        split: str, size: int, img_size: int, difficulty: str, seed: int, cache_dir: Any, processes: int
    ) -> np.ndarray:
        stem = f"pathfinder{img_size}_{difficulty}_seed{seed}_{split}_"
        path = Path(cache_dir) / f"{stem}{size}_v{GENERATOR_VERSION}.npy" if cache_dir else None
        cached = _read_cache(path, stem, size) if path is not None else None
        if cached is not None:
            return cached
        node = _node_ranks()
        if node is not None:  # torch.distributed: local rank 0 fills the cache, the node's other ranks read it
            local_rank, local_world_size = node
            if path is None:
                processes //= local_world_size  # every rank generates its own copy: share the node's CPUs
            elif local_rank != 0:
                return _wait_for_cache(path, stem, size)
        try:
            images, _ = generate(size, img_size, difficulty, seed, split, processes)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(path) as f:  # a concurrent job (or rank) reads a whole file or none
                    np.save(f, images)
                _logger.info(f"pathfinder: cached {size} {split} images in {path}")
        except Exception as error:
            if path is not None and node is not None:  # the node's other ranks are waiting for this file
                with contextlib.suppress(OSError), atomic_write(_failure_marker(path), "w") as f:
                    f.write(f"{type(error).__name__}: {error}")
            raise
        return images


def _read_cache(path: Path, stem: str, size: int) -> np.ndarray | None:
    """The first ``size`` images of a cached split of at least ``size`` (image i depends on i only), or None."""
    for cached in sorted(path.parent.glob(f"{stem}*_v{GENERATOR_VERSION}.npy")):
        count = cached.name[len(stem) :].split("_")[0]
        if count.isdigit() and int(count) >= size:
            return np.load(cached, mmap_mode="r")[:size].copy()
    return None


def _node_ranks() -> tuple[int, int] | None:
    """(local rank, processes on this node) under an initialised ``torch.distributed`` group of several processes;
    None otherwise (one process: nothing to share)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    local_rank = world_info_from_env()[0]
    return local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))


def _failure_marker(path: Path) -> Path:
    """The file local rank 0 writes (with its error) when it could not generate or cache ``path``."""
    return path.with_name(path.name + ".failed")


def _wait_for_cache(path: Path, stem: str, size: int, poll_s: float = 0.5) -> np.ndarray:
    """A non-leading rank: wait until local rank 0 has written the split, then read it; raise if rank 0 reports a
    failure after this rank started waiting (an older marker is another run's)."""
    _logger.info(f"pathfinder: waiting for local rank 0 to generate {path}")
    started = time.time()
    start = last_note = time.monotonic()
    marker = _failure_marker(path)
    while (images := _read_cache(path, stem, size)) is None:
        if marker.exists() and marker.stat().st_mtime >= started - 1:
            raise RuntimeError(f"pathfinder: local rank 0 could not generate {path}: {marker.read_text()}")
        time.sleep(poll_s)
        if time.monotonic() - last_note > 300:
            last_note = time.monotonic()
            _logger.info(f"pathfinder: still waiting for {path} ({(last_note - start) / 60:.0f} min)")
    return images


@register_dataset("pathfinder")
def _pathfinder(data_cfg: Any, train_tf: Any, val_tf: Any, seed: int) -> tuple[Dataset, Dataset]:
    """``data=pathfinder``: the images depend on ``data.pathfinder_seed``, not on the run's ``seed`` (so every run of
    a sweep sees the same data); ``data.num_workers`` > 1 generates with that many processes."""
    kwargs = dict(
        img_size=data_cfg.img_size,
        difficulty=data_cfg.pathfinder_difficulty,
        seed=data_cfg.pathfinder_seed,
        in_chans=data_cfg.in_chans,
        cache_dir=data_cfg.cache_dir,
        processes=data_cfg.num_workers,
    )
    return (
        PathfinderDataset("train", data_cfg.pathfinder_train_size, transform=train_tf, **kwargs),
        PathfinderDataset("val", data_cfg.pathfinder_val_size, transform=val_tf, **kwargs),
    )
