"""Capability probes: small procedural image tasks, each isolating one thing a 2-D token mixer may or may not do.

The 2-D counterpart of the synthetic sequence probes that rank sequence mixers cheaply (MAD: Poli et al., ICML 2024,
"Mechanistic Design and Scaling of Hybrid Architectures"). Every probe draws a 32 x 32 grey image on an 8 x 8 grid of
4 x 4 cells, so that with non-overlapping 4 x 4 patches (``isoformer_tiny``) one cell is one token and a probe's
question is a question about tokens. Cells hold small binary patterns (ink 255 on 0). The probes and why each
isolates its capability (``docs/results/capability-screen.md`` has the design and the screen's results):

``longrange`` (2 classes): two cells far apart (Chebyshev distance >= 5 cells) show a pattern each from a
    dictionary of 8 (equal ink); are they the same pattern? Every other cell is blank. Needs content from two distant
    tokens in one place. Without token mixing the model reads a sum of per-token features, and "f(a) + f(b) comes
    from a = b" is not linearly separable (summing the same-class inequalities over a and b contradicts the
    different-class ones), so ``identity`` stays at chance.
``symmetry`` (2 classes): the 3 left columns of cells hold random patterns (3 left-right symmetric ones), the 2
    middle columns are blank, the 3 right columns are the left ones mirrored (label 1) or drawn afresh (label 0).
    Needs a fixed position-to-position map (cell (r, c) against (r, 7 - c), 3 to 7 cells apart); a mixer blind to
    position sees the same kind of bag of cells in both classes.
``recall`` (2 classes): two cells are key-value pairs (the top half of a cell a key from a dictionary of 8, the
    bottom half value 0 or value 1, each value once), a third cell is the query (one of the two keys over a fixed
    "query" mark); the label is the value stored with the query's key. The three cells are anywhere. Needs
    content-addressed retrieval: match the query to its key wherever it is and bring that cell's value to the
    read-out; the bag of values is the same in both classes.
``count`` (2 classes): 3 or 4 horizontal bars (in rows with a blank row between) made of 8 inked cells in all, with
    random patterns. Needs counting objects, not tokens: every image has 8 inked cells, so the bag of cells says
    nothing; a bar's ends are found from neighbouring cells and the ends (or bars) summed over the grid.

Every image is a deterministic function of ``(probe, seed, split, index)`` (numpy ``SeedSequence``); labels cycle
with the index (``index % num_classes``: balanced exactly), the geometry is drawn independently of the label wherever
the label does not define it, and train and val are different random streams of the same seed. ``ProbeDataset``
keeps a split in memory as uint8 and, with ``cache_dir``, in an ``.npy`` file that later runs read (as Pathfinder).
Generating is cheap (about 20 k images/s), so without a cache every process simply generates its own copy.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixerzoo.training.atomic import atomic_write
from mixerzoo.training.images import GrayscaleArrayDataset

__all__ = [
    "CELL",
    "GRID",
    "IMG_SIZE",
    "PROBES",
    "Probe",
    "ProbeDataset",
    "cells",
    "dictionary",
    "generate",
]

_logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # part of every cache file name: bump it when the images change
CELL, GRID = 4, 8  # pixels per cell side, cells per image side
IMG_SIZE = CELL * GRID
SPLITS = {"train": 0, "val": 1}
INK = 255


@functools.cache
def dictionary(name: str) -> np.ndarray:
    """A fixed set of binary cell patterns (bool, (n, h, w)), the same in every run.

    ``longrange``: 8 patterns of 4 x 4 with 8 pixels on, pairwise at Hamming distance >= 6 (same ink: the amount
    of ink never tells two patterns apart). ``symmetry``: 4 left-right symmetric 4 x 4 patterns (blank, full, two
    bars, frame; the probe inks the last three). ``keys``: 8 patterns of 2 x 4 with 4 pixels on, pairwise distance
    >= 4. ``values``: 2 patterns of 2 x 4 with 4 pixels on, then the query mark (a 2 x 4 checkerboard, 4 on), all
    pairwise at distance >= 4."""
    if name == "symmetry":
        blank, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
        bars = np.zeros((4, 4), bool)
        bars[[0, 2]] = True
        frame = full.copy()
        frame[1:3, 1:3] = False
        return np.stack([blank, full, bars, frame])
    shape, count, min_distance, stream = {
        "longrange": ((4, 4), 8, 6, 1),
        "keys": ((2, 4), 8, 4, 2),
        "values": ((2, 4), 2, 4, 3),
    }[name]
    rng = np.random.default_rng([20261207, stream])
    size = shape[0] * shape[1]
    chosen: list[np.ndarray] = []
    if name == "values":  # the query mark is kept apart from every value
        chosen.append(np.indices(shape).sum(0).ravel() % 2 == 0)
    while len(chosen) < count + (name == "values"):
        candidate = np.zeros(size, bool)
        candidate[rng.choice(size, size // 2, replace=False)] = True
        if all((candidate != other).sum() >= min_distance for other in chosen):
            chosen.append(candidate)
    if name == "values":
        chosen = chosen[1:] + chosen[:1]  # the values, then the mark
    return np.stack(chosen).reshape(-1, *shape)


def cells(image: np.ndarray) -> np.ndarray:
    """The image as its grid of cells: (GRID, GRID, CELL, CELL) (a view)."""
    return image.reshape(GRID, CELL, GRID, CELL).swapaxes(1, 2)


def _paint(image: np.ndarray, row: int, col: int, pattern: np.ndarray, top: int = 0) -> None:
    """Ink ``pattern`` into cell (row, col), from pixel row ``top`` of the cell."""
    h, w = pattern.shape
    y, x = row * CELL + top, col * CELL
    image[y : y + h, x : x + w] = np.where(pattern, INK, 0)


@functools.cache
def _far_pairs(min_distance: int = 5) -> np.ndarray:
    """All ordered pairs of cells at Chebyshev distance >= ``min_distance``: (n, 2, 2) as (row, col)."""
    grid = np.indices((GRID, GRID)).reshape(2, -1).T
    a, b = np.meshgrid(np.arange(len(grid)), np.arange(len(grid)), indexing="ij")
    far = np.abs(grid[a] - grid[b]).max(-1) >= min_distance
    return np.stack([grid[a[far]], grid[b[far]]], axis=1)


def _longrange(rng: np.random.Generator, label: int) -> np.ndarray:
    patterns, pairs = dictionary("longrange"), _far_pairs()
    (r0, c0), (r1, c1) = pairs[rng.integers(len(pairs))]
    first = int(rng.integers(len(patterns)))
    second = first if label == 1 else (first + 1 + int(rng.integers(len(patterns) - 1))) % len(patterns)
    image = np.zeros((IMG_SIZE, IMG_SIZE), np.uint8)
    _paint(image, r0, c0, patterns[first])
    _paint(image, r1, c1, patterns[second])
    return image


def _symmetry(rng: np.random.Generator, label: int, gap: int = 2) -> np.ndarray:
    patterns = dictionary("symmetry")
    side = (GRID - gap) // 2  # columns per side; the ``gap`` middle columns stay blank
    left = rng.integers(1, len(patterns), size=(GRID, side))
    right = left[:, ::-1] if label == 1 else rng.integers(1, len(patterns), size=(GRID, side))
    grid = np.concatenate([left, np.zeros((GRID, gap), np.int64), right], axis=1)
    return np.where(patterns[grid].swapaxes(1, 2).reshape(IMG_SIZE, IMG_SIZE), INK, 0).astype(np.uint8)


def _recall(rng: np.random.Generator, label: int, pairs: int = 2) -> np.ndarray:
    keys, values = dictionary("keys"), dictionary("values")
    mark = values[-1]
    chosen_keys = rng.choice(len(keys), pairs, replace=False)
    stored = rng.permutation(pairs)  # every value once: the bag of values never tells the label
    query = int(np.flatnonzero(stored == label)[0])
    places = rng.choice(GRID * GRID, pairs + 1, replace=False)  # the pairs' cells, then the query's
    image = np.zeros((IMG_SIZE, IMG_SIZE), np.uint8)
    for key, value, flat in zip(chosen_keys, stored, places[:-1]):
        row, col = divmod(int(flat), GRID)
        _paint(image, row, col, keys[key])
        _paint(image, row, col, values[value], top=2)
    row, col = divmod(int(places[-1]), GRID)
    _paint(image, row, col, keys[chosen_keys[query]])
    _paint(image, row, col, mark, top=2)
    return image


@functools.cache
def _compositions(total: int, parts: int, largest: int) -> tuple[tuple[int, ...], ...]:
    """Every ordered way to write ``total`` as ``parts`` sizes in 1..``largest``."""
    if parts == 0:
        return ((),) if total == 0 else ()
    return tuple(
        (first, *rest)
        for first in range(1, min(largest, total) + 1)
        for rest in _compositions(total - first, parts - 1, largest)
    )


@functools.cache
def _spaced_rows(count: int) -> tuple[tuple[int, ...], ...]:
    """Every set of ``count`` grid rows with no two adjacent."""
    rows = itertools.combinations(range(GRID), count)
    return tuple(r for r in rows if all(b - a > 1 for a, b in itertools.pairwise(r)))


def _count(rng: np.random.Generator, label: int, cells_inked: int = 8, largest: int = 4) -> np.ndarray:
    patterns = dictionary("longrange")
    objects = 3 + label  # 3 or 4 horizontal bars, always ``cells_inked`` cells in all
    sizes = _compositions(cells_inked, objects, largest)
    sizes = sizes[rng.integers(len(sizes))]
    rows = _spaced_rows(objects)
    rows = rows[rng.integers(len(rows))]
    image = np.zeros((IMG_SIZE, IMG_SIZE), np.uint8)
    for row, size in zip(rows, sizes):
        start = int(rng.integers(GRID - size + 1))
        for i, index in enumerate(rng.integers(len(patterns), size=size)):
            _paint(image, row, start + i, patterns[index])
    return image


@dataclass(frozen=True)
class Probe:
    """One probe: its sampler ``(rng, label) -> uint8 (32, 32)`` and class count, the split sizes of the screen's
    recipe, and the capability it isolates (one line, for tables)."""

    name: str
    sample: Callable[[np.random.Generator, int], np.ndarray]
    num_classes: int
    capability: str
    train_size: int = 8000
    val_size: int = 1000


PROBES: dict[str, Probe] = {
    probe.name: probe
    for probe in (
        Probe("longrange", _longrange, 2, "compare two distant tokens"),
        Probe("symmetry", _symmetry, 2, "fixed position-to-position map (mirror)"),
        Probe("recall", _recall, 2, "content-addressed retrieval"),
        Probe("count", _count, 2, "count objects, not tokens (3 or 4 bars of 8 cells)"),
    )
}
_PROBE_IDS = {name: i for i, name in enumerate(PROBES)}


def _check_probe(name: str) -> Probe:
    if name not in PROBES:
        raise ValueError(f"Unknown probe {name!r}; probes: {', '.join(PROBES)}.")
    return PROBES[name]


def generate(
    name: str, num_images: int, seed: int = 0, split: str = "train", start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start + num_images - 1`` of a probe's split: ``(uint8 (N, 32, 32), int64 (N,))``."""
    probe = _check_probe(name)
    if split not in SPLITS:
        raise ValueError(f"probe {name}: split must be one of {', '.join(SPLITS)}, got {split!r}.")
    indices = np.arange(start, start + num_images)
    labels = indices % probe.num_classes
    images = np.empty((num_images, IMG_SIZE, IMG_SIZE), np.uint8)
    for i, (index, label) in enumerate(zip(indices, labels)):
        rng = np.random.default_rng([_PROBE_IDS[name], seed, SPLITS[split], int(index)])
        images[i] = probe.sample(rng, int(label))
    return images, labels.astype(np.int64)


class ProbeDataset(GrayscaleArrayDataset):
    """One split of probe ``name`` in memory (uint8), yielding ``(PIL image, label)``; ``targets`` lists the labels.
    With ``cache_dir`` the split is read from (or atomically written to) an ``.npy`` file named after its parameters
    (a cached split with more images serves its first ``size``: image i depends on i only)."""

    def __init__(
        self,
        name: str,
        split: str = "train",
        size: int | None = None,
        seed: int = 0,
        in_chans: int = 1,
        cache_dir: str | os.PathLike | None = None,
        transform: Any = None,
    ) -> None:
        probe = _check_probe(name)
        if in_chans not in (1, 3):
            raise ValueError(f"probe {name}: in_chans must be 1 or 3, got {in_chans}.")
        size = size if size is not None else (probe.train_size if split == "train" else probe.val_size)
        if size < probe.num_classes:
            raise ValueError(f"probe {name}: a split needs at least {probe.num_classes} images (one per class).")
        self.mode, self.transform = "L" if in_chans == 1 else "RGB", transform
        self.images = self._load_or_generate(name, split, size, seed, cache_dir)
        self.targets = [i % probe.num_classes for i in range(size)]

    @staticmethod
    def _load_or_generate(name: str, split: str, size: int, seed: int, cache_dir: Any) -> np.ndarray:
        stem = f"probe_{name}_seed{seed}_{split}_"
        if cache_dir:
            folder = Path(cache_dir)
            for cached in sorted(folder.glob(f"{stem}*_v{GENERATOR_VERSION}.npy")):
                count = cached.name[len(stem) :].split("_")[0]
                if count.isdigit() and int(count) >= size:
                    return np.load(cached, mmap_mode="r")[:size].copy()
        images, _ = generate(name, size, seed, split)
        if cache_dir:
            path = Path(cache_dir) / f"{stem}{size}_v{GENERATOR_VERSION}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:  # a concurrent job reads a whole file or none
                np.save(f, images)
            _logger.info(f"probe {name}: cached {size} {split} images in {path}")
        return images
