"""Datasets and loaders for ``train.py``: the embedded ``digits`` set, image folders (ImageNet), synthetic data.

Every dataset yields ``(PIL image, int label)`` and gets its transform from timm's ``create_transform``, so the
same augmentation config drives all of them. One dataset object is built per split, so no transform is ever
shared between the train and eval pipelines.

The loaders are built once per run (persistent workers) and follow timm's GPU data path: workers decode and
augment to **uint8** tensors (``create_transform(use_prefetcher=True)`` + timm's ``fast_collate``), and timm's
``PrefetchLoader`` copies each batch to the device on a side stream (CUDA), converts it to float and normalises it
there. The training loader (``TrainBatches``) then applies the batch-level augmentations on the device: random
erasing and Mixup/CutMix.

The training order comes from ``EpochBatchSampler``, a stateful batch sampler: each epoch has one global order of
the samples, a function of ``(seed, epoch)`` only; the ranks consume it in contiguous stretches, and
``set_epoch(epoch, start_sample, num_batches)`` starts at any position of it, so a run resumes in the middle of an
epoch, with the same or another number of processes, without skipping or repeating a sample.

Every random draw of the data path is a function of where it is in training, never of the global RNGs' history:
a sample's augmentation draws from RNGs seeded by ``(seed, epoch, index)`` (``SeededSamples``, in a worker or in the
main process), a batch's erasing and Mixup/CutMix from RNGs seeded by ``(seed, epoch, position, rank)``
(``TrainBatches``), both inside ``isolated_rngs``, which restores the global RNGs afterwards, and the loaders' own
seeds come from private generators. So the global RNGs (saved in every checkpoint) drive only the model (drop path,
dropout), and the prefetcher preparing batch k+1 before step k's checkpoint draws nothing from them: a resume at
any step continues with the batches, augmentations and RNG states of the uninterrupted run, with or without
workers. Loader workers ignore the stop signals (``ignore_signals``): a SIGTERM sent to a whole process group (a
``torchrun`` agent shutting down, Slurm) must reach the training process, which checkpoints, not kill its workers.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import ImageDataset, auto_augment, create_dataset, create_transform
from timm.data.loader import PrefetchLoader, fast_collate
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, Sampler

from mixerzoo.registry import Registry
from mixerzoo.training.probes import IMG_SIZE as PROBE_IMG_SIZE
from mixerzoo.training.probes import PROBES, ProbeDataset

_logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DigitsDataset",
    "EpochBatchSampler",
    "FolderDataset",
    "SeededSamples",
    "TrainBatches",
    "create_datasets",
    "default_num_workers",
    "epoch_order",
    "eval_loader",
    "fix_posterize_for_pillow13",
    "ignore_signals",
    "isolated_rngs",
    "log_unused_samples",
    "rank_batches",
    "register_dataset",
    "resolve_num_workers",
    "train_loader",
    "usable_cpus",
]

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
FOLDER_LAYOUT = """expected an ImageFolder layout (or timm-readable .tar shards) with one sub-folder per class:
    {root}/train/<class_name>/<image>.jpg
    {root}/val/<class_name>/<image>.jpg      (or validation/, valid/)"""


def fix_posterize_for_pillow13() -> None:
    """Make timm's RandAugment posterize ops valid under Pillow >= 13.

    ``rand-m9-mstd0.5-inc1`` can draw magnitude 10, where ``PosterizeIncreasing`` asks to keep 0 bits (and
    ``Posterize`` below magnitude 2.5 does the same). Pillow < 13 returned a black image; Pillow 13 raises
    ``ValueError: bits must be between or equal to 1 and 8`` in a dataloader worker, a few hundred times per
    ImageNet epoch. Keeping 1 bit instead is the nearest valid op. Idempotent.
    """

    def posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
        return auto_augment.posterize(img, max(1, int(bits_to_keep)), **kwargs)

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = posterize


fix_posterize_for_pillow13()


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1797 real 8x8 grey images, 10 classes, bundled: no download).

    A fixed stratified split (``val_fraction`` of the images, ``split_seed``) gives ``train`` or ``val``. Each
    image is upsampled once to ``img_size`` (bicubic) and returned as a PIL image in mode ``L`` (``in_chans=1``)
    or ``RGB`` (``in_chans=3``), so timm's transforms treat it like any photo.
    """

    def __init__(
        self,
        split: str = "train",
        img_size: int = 32,
        in_chans: int = 1,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        transform: Any = None,
    ) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"digits: split must be 'train' or 'val', got {split!r}.")
        if in_chans not in (1, 3):
            raise ValueError(f"digits: in_chans must be 1 or 3, got {in_chans}.")
        digits = load_digits()
        images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # (1797, 8, 8), values 0..16
        indices = np.arange(len(images))
        train_idx, val_idx = train_test_split(
            indices, test_size=val_fraction, random_state=split_seed, stratify=digits.target
        )
        keep = np.sort(train_idx if split == "train" else val_idx)
        mode = "L" if in_chans == 1 else "RGB"
        self.images = [
            Image.fromarray(images[i], mode="L").resize((img_size, img_size), Image.Resampling.BICUBIC).convert(mode)
            for i in keep
        ]
        self.targets = [int(t) for t in digits.target[keep]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = self.images[index]
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


class FakeDataset(Dataset):
    """Synthetic images (uniform noise, random labels), fixed per index: for throughput runs at any size."""

    def __init__(self, size: int, img_size: int, in_chans: int, num_classes: int, seed: int, transform: Any = None):
        self.size, self.img_size, self.in_chans = size, img_size, in_chans
        self.num_classes, self.seed, self.transform = num_classes, seed, transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[Any, int]:
        rng = np.random.default_rng(self.seed + index)
        pixels = rng.integers(0, 256, (self.img_size, self.img_size, self.in_chans), dtype=np.uint8)
        img = Image.fromarray(pixels[..., 0] if self.in_chans == 1 else pixels)
        target = int(rng.integers(self.num_classes))
        return (self.transform(img) if self.transform is not None else img), target


# the folder names timm accepts for a split (its create_dataset searches these), the requested name first
_SPLIT_SYNONYMS = (("train", "training"), ("val", "validation", "valid", "eval", "evaluation"))


def _split_root(root: str, split: str) -> str:
    """The folder (or ``.tar``) of ``split`` under a dataset root: ``<root>/<split>``, else a synonym timm accepts
    (``val``, ``validation``, ``valid``, ...), each as a folder or a ``.tar`` file. timm falls back to the root
    itself when none exists, so a root of bare class folders would be both the train and the val split and the
    reported accuracy would be measured on training images: here that is an error naming the layout."""
    name = split.split("[")[0]
    synonyms = next((group for group in _SPLIT_SYNONYMS if name in group), ())
    tried = list(dict.fromkeys([name, *synonyms]))
    for candidate in tried:
        for path in (os.path.join(root, candidate), os.path.join(root, f"{candidate}.tar")):
            if os.path.exists(path):
                return path
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() or e.name.endswith(".tar"))[:8]
    raise FileNotFoundError(
        f"data.root {root!r} has no {split!r} split (looked for {', '.join(f'{t}/' for t in tried)} and .tar "
        f"files of those names; found {found or 'nothing'}). Without it the validation images would be the "
        f"training images. Put the held-out images in their own split, or name the split folders with "
        f"data.train_split=... data.val_split=...; {FOLDER_LAYOUT.format(root=root)}"
    )


def _empty_class_folders(split_root: str, classes: dict[str, int] | None) -> list[str]:
    """Sub-folders of a split that hold no image (timm drops them: they are not classes)."""
    if classes is None or not os.path.isdir(split_root):
        return []
    return sorted(e.name for e in os.scandir(split_root) if e.is_dir() and e.name not in classes)


class FolderDataset(ImageDataset):
    """timm's ``ImageDataset`` (a folder or ``.tar`` of images, one class per folder) whose unreadable images are
    named by path. As timm does, an image that cannot be decoded is replaced by the next one (up to
    ``TIMM_DATASET_MAX_RETRIES`` in a row), so one bad file does not stop an ImageNet epoch; the warning says which
    file to remove or repair, not only its index."""

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for _ in range(self._max_retries):
            try:
                img, target = self.reader[index][:2]
                img = Image.open(img)
                img = img.convert(self.input_img_mode) if self.input_img_mode else img  # decodes: errors surface here
                break
            except OSError as err:
                _logger.warning(
                    f"unreadable image {self.reader.filename(index, absolute=True)} ({err}): sample {index} replaced "
                    "by the next one. Remove or repair the file."
                )
                index = (index + 1) % len(self.reader)
        else:
            raise RuntimeError(
                f"{self._max_retries} images in a row from {self.reader.filename(index, absolute=True)} back are "
                "unreadable: is the dataset damaged?"
            )
        if self.transform is not None:
            img = self.transform(img)
        return img, -1 if target is None else int(target)


def _check_folder_root(root: str | None) -> None:
    """A clear error for a missing or empty dataset root, before timm's own (less helpful) one."""
    if not root:
        raise FileNotFoundError(f"data.root is not set; {FOLDER_LAYOUT.format(root='<data.root>')}")
    if not os.path.exists(root):
        raise FileNotFoundError(f"data.root {root!r} does not exist; {FOLDER_LAYOUT.format(root=root)}")
    if os.path.isfile(root):
        return  # a .tar of the whole set, read by timm
    has_images = False
    for _dirpath, _dirnames, filenames in os.walk(root):
        if any(f.lower().endswith((*IMG_EXTENSIONS, ".tar")) for f in filenames):
            has_images = True
            break
    if not has_images:
        raise FileNotFoundError(f"data.root {root!r} holds no images; {FOLDER_LAYOUT.format(root=root)}")


def _transform(data_cfg: Any, aug_cfg: Any, is_training: bool) -> Any:
    """timm's train or eval transform from the data and aug configs, ending in a uint8 CHW tensor: conversion to
    float, normalisation and random erasing happen on the device (``PrefetchLoader``)."""
    common = dict(
        input_size=(data_cfg.in_chans, data_cfg.img_size, data_cfg.img_size),
        mean=tuple(data_cfg.mean),
        std=tuple(data_cfg.std),
        crop_pct=data_cfg.crop_pct,
        use_prefetcher=True,
    )
    if not is_training:
        return create_transform(**common, is_training=False, interpolation=data_cfg.interpolation)
    return create_transform(
        **common,
        is_training=True,
        no_aug=aug_cfg.no_aug,
        scale=tuple(aug_cfg.scale),
        ratio=tuple(aug_cfg.ratio),
        hflip=aug_cfg.hflip,
        vflip=aug_cfg.vflip,
        color_jitter=aug_cfg.color_jitter,
        auto_augment=aug_cfg.auto_augment,
        interpolation=aug_cfg.train_interpolation,
    )


def create_datasets(data_cfg: Any, aug_cfg: Any, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, val) datasets, each with its own transform, for ``data.name`` in digits / folder / fake.

    The class count is settled here: ``data.num_classes`` null is filled in (on ``data_cfg``) from the data (digits:
    10; folder: the class folders of the train split), and a set value is checked against the labels of both
    splits, so a head too small for the data is a clear error now rather than an index error at the first step."""
    datasets = _create_datasets(data_cfg, aug_cfg, seed)
    _settle_num_classes(data_cfg, *datasets)
    return datasets


def _class_names(dataset: Dataset) -> dict[str, int] | None:
    """The class-name -> label map of a timm folder/tar dataset (None where the reader has none)."""
    reader = getattr(dataset, "reader", None)
    return getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", None)


def _labels(dataset: Dataset) -> list[int] | None:
    """Every label of a dataset whose labels are known without loading images (None otherwise: WebDataset...)."""
    if getattr(dataset, "targets", None) is not None:  # DigitsDataset and other in-memory sets
        return [int(t) for t in dataset.targets]
    reader = getattr(dataset, "reader", None)
    if getattr(reader, "targets", None) is not None:
        return [int(t) for t in reader.targets]
    if getattr(reader, "samples", None) is not None:
        return [int(sample[1]) for sample in reader.samples]
    return None


def _settle_num_classes(data_cfg: Any, train_ds: Dataset, val_ds: Dataset) -> None:
    num_classes, name = data_cfg.num_classes, data_cfg.name
    if isinstance(train_ds, FakeDataset):  # random labels drawn below num_classes (required by data=fake)
        return
    train_classes, val_classes = _class_names(train_ds), _class_names(val_ds)
    if train_classes is not None and val_classes is not None and train_classes != val_classes:
        only_train, only_val = (
            sorted(set(train_classes) - set(val_classes)),
            sorted(set(val_classes) - set(train_classes)),
        )
        raise ValueError(
            f"data.root {data_cfg.root!r}: the train split ({data_cfg.train_split!r}, {len(train_classes)} classes) "
            f"and the val split ({data_cfg.val_split!r}, {len(val_classes)} classes) have different class folders "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]}), so the same label would mean different "
            "classes. Give both splits the same class sub-folders."
        )
    train_labels, val_labels = _labels(train_ds), _labels(val_ds)
    found = len(train_classes) if train_classes is not None else None
    if train_labels:
        found = max(found or 0, max(train_labels) + 1)
    if num_classes is None:
        if found is None:
            raise ValueError(
                f"data.num_classes is null and the class count cannot be read from data.dataset "
                f"{data_cfg.dataset!r} without reading every sample: set it, e.g. data.num_classes=1000."
            )
        data_cfg.num_classes = found
        _logger.info(f"data.num_classes: {found} (from the {name} training set)")
        return
    for split, labels in (("train", train_labels), ("val", val_labels)):
        top = max(labels) if labels else -1
        if top >= num_classes:
            where = f"{found} class folders under {data_cfg.root!r}" if train_classes else f"{found} classes"
            fix = f"Set data.num_classes={found}"
            if train_classes:
                fix += " or leave it null (data.num_classes=null) to take the count from the class folders"
            raise ValueError(
                f"data.num_classes={num_classes} is too small for the {name} data: its {split} split has labels up "
                f"to {top} ({where}), but the model's head would have {num_classes} output(s) and training would "
                f"fail at the first step with an index error. {fix}."
            )
    if found is not None and found < num_classes:
        _logger.info(f"data.num_classes={num_classes}: the {name} training set has labels of only {found} classes.")


# data.name -> builder(data_cfg, train_transform, val_transform, seed) -> (train, val). A new dataset is one
# function registered here (``@register_dataset("name")``) plus one ``configs/data/<name>.yaml``.
DATASETS = Registry("dataset")  # data.name -> builder(data_cfg, train_transform, val_transform, seed)


def register_dataset(name: str) -> Callable:
    """Decorator: register a dataset builder ``(data_cfg, train_tf, val_tf, seed) -> (train, val)`` as ``name``."""
    return DATASETS.register(name)


def _create_datasets(data_cfg: Any, aug_cfg: Any, seed: int) -> tuple[Dataset, Dataset]:
    builder = DATASETS.get(data_cfg.name)  # an unknown data.name: an error listing the registered ones
    train_tf, val_tf = _transform(data_cfg, aug_cfg, True), _transform(data_cfg, aug_cfg, False)
    return builder(data_cfg, train_tf, val_tf, seed)


@register_dataset("digits")
def _digits(data_cfg: Any, train_tf: Any, val_tf: Any, seed: int) -> tuple[Dataset, Dataset]:
    kwargs = dict(img_size=data_cfg.img_size, in_chans=data_cfg.in_chans, val_fraction=data_cfg.val_fraction)
    return DigitsDataset("train", transform=train_tf, **kwargs), DigitsDataset("val", transform=val_tf, **kwargs)


@register_dataset("fake")
def _fake(data_cfg: Any, train_tf: Any, val_tf: Any, seed: int) -> tuple[Dataset, Dataset]:
    if data_cfg.num_classes is None:
        raise ValueError("data=fake draws random labels: set the class count, e.g. data.num_classes=1000.")
    kwargs = dict(img_size=data_cfg.img_size, in_chans=data_cfg.in_chans, num_classes=data_cfg.num_classes)
    return (
        FakeDataset(data_cfg.fake_train_size, seed=seed, transform=train_tf, **kwargs),
        FakeDataset(data_cfg.fake_val_size, seed=seed + 10**9, transform=val_tf, **kwargs),
    )


@register_dataset("folder")
def _folder(data_cfg: Any, train_tf: Any, val_tf: Any, seed: int) -> tuple[Dataset, Dataset]:
    _check_folder_root(data_cfg.root)
    mode = "L" if data_cfg.in_chans == 1 else "RGB"
    datasets = []
    # timm's own readers (folder, tar): each split from its own folder; other sources (wds/, hfds/, torch/...) split
    # themselves
    own_reader = "/" not in data_cfg.dataset
    for split, tf, training in ((data_cfg.train_split, train_tf, True), (data_cfg.val_split, val_tf, False)):
        if own_reader and os.path.isfile(data_cfg.root):
            raise FileNotFoundError(
                f"data.root {data_cfg.root!r} is one file: the train and the val split would both read it and the "
                f"validation images would be the training images; {FOLDER_LAYOUT.format(root='<data.root>')}"
            )
        root = _split_root(data_cfg.root, split) if own_reader else data_cfg.root
        try:
            if own_reader:
                ds = FolderDataset(root, reader=data_cfg.dataset or None, input_img_mode=mode)
            else:
                ds = create_dataset(data_cfg.dataset, root=root, split=split, is_training=training, input_img_mode=mode)
        except (RuntimeError, FileNotFoundError) as err:  # timm: "Found 0 images in subfolders of ..."
            raise FileNotFoundError(
                f"could not read split {split!r} under data.root {data_cfg.root!r} ({err}); "
                + FOLDER_LAYOUT.format(root=data_cfg.root)
            ) from err
        if len(ds) == 0:
            raise FileNotFoundError(
                f"split {split!r} under {data_cfg.root!r} is empty; {FOLDER_LAYOUT.format(root=data_cfg.root)}"
            )
        if empty := _empty_class_folders(root, _class_names(ds)):
            _logger.warning(
                f"{root}: {len(empty)} folder(s) without images are not classes ({', '.join(empty[:8])}); "
                f"the {split!r} split has {len(_class_names(ds) or {})} classes. Add their images or remove them."
            )
        ds.transform = tf
        datasets.append(ds)
    return datasets[0], datasets[1]


def _probe_builder(probe: str) -> Callable[[Any, Any, Any, int], tuple[Dataset, Dataset]]:
    def build(data_cfg: Any, train_tf: Any, val_tf: Any, seed: int) -> tuple[Dataset, Dataset]:
        if data_cfg.img_size != PROBE_IMG_SIZE or data_cfg.num_classes != PROBES[probe].num_classes:
            raise ValueError(
                f"data=probe_{probe} draws {PROBE_IMG_SIZE}x{PROBE_IMG_SIZE} images of {PROBES[probe].num_classes} "
                f"classes: set data.img_size={PROBE_IMG_SIZE} data.num_classes={PROBES[probe].num_classes} (got "
                f"{data_cfg.img_size} and {data_cfg.num_classes})."
            )
        kwargs = dict(in_chans=data_cfg.in_chans, cache_dir=data_cfg.cache_dir)
        return (
            ProbeDataset(probe, "train", transform=train_tf, **kwargs),
            ProbeDataset(probe, "val", transform=val_tf, **kwargs),
        )

    build.__doc__ = (
        f"``data=probe_{probe}``: the capability probe {probe!r} (training/probes.py); fixed images (seed 0, the "
        "screen's split sizes), the same for every run."
    )
    return build


for _probe in PROBES:
    register_dataset(f"probe_{_probe}")(_probe_builder(_probe))


def epoch_order(num_samples: int, epoch: int, seed: int) -> list[int]:
    """The epoch's global sample order: a permutation of the training set that depends on ``(seed, epoch)`` only,
    not on the number of processes (the same draw as torch's ``DistributedSampler``)."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=generator).tolist()


def rank_batches(
    order: list[int], start: int, num_batches: int, batch_size: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This rank's ``num_batches`` batches of ``order`` from position ``start`` on.

    Micro-step k of all ranks together takes the ``batch_size * world_size`` positions from
    ``start + k * batch_size * world_size`` on, rank r every ``world_size``-th of them from the r-th. So the ranks
    always consume a contiguous stretch of the global order, and a run that stopped after ``start`` samples
    continues from position ``start`` with any number of processes and any batch size: no sample is skipped or
    repeated. (From ``start=0`` these are exactly ``DistributedSampler(drop_last=True)``'s shards, batched.)"""
    step = batch_size * world_size
    end = start + num_batches * step
    if end > len(order):
        raise ValueError(f"{num_batches} batches of {step} samples from position {start} overrun {len(order)} samples.")
    return [order[i + rank : i + step : world_size] for i in range(start, end, step)]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """The training batch sampler: this rank's batches of the current epoch (``rank_batches`` of
    ``epoch_order``). ``set_epoch(epoch, start_sample, num_batches)`` picks the epoch, the position in its global
    order to start from (the samples all ranks already trained on) and how many batches to give. Each item is
    ``(epoch, index)``, read by ``SeededSamples``.

    The loader iterates the sampler in the main process, so ``set_epoch`` between epochs takes effect with
    persistent workers.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_sample, self.num_batches = 0, 0, 0

    def set_epoch(self, epoch: int, start_sample: int, num_batches: int) -> None:
        if start_sample + num_batches * self.batch_size * self.world_size > self.num_samples or start_sample < 0:
            raise ValueError(
                f"{num_batches} batches of {self.batch_size} x {self.world_size} process(es) from sample "
                f"{start_sample} do not fit the {self.num_samples} training samples."
            )
        self.epoch, self.start_sample, self.num_batches = epoch, start_sample, num_batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(self.num_samples, self.epoch, self.seed)
        batches = rank_batches(order, self.start_sample, self.num_batches, self.batch_size, self.rank, self.world_size)
        for batch in batches:
            yield [(self.epoch, index) for index in batch]

    def __len__(self) -> int:
        return self.num_batches


def _seed_of(*key: int) -> int:
    return hash(key) & (2**63 - 1)  # tuples of ints hash the same in every process (no hash randomisation)


@contextlib.contextmanager
def isolated_rngs(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global RNGs (the CPU generator, and ``device``'s if it is a GPU) from
    ``seed`` for the block, then put back the states they had: what the block draws depends on ``seed`` only, and
    the code around it sees the global RNGs as if the block had not run."""
    on_gpu = device is not None and device.type == "cuda"
    python, numpy_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    gpu = torch.cuda.get_rng_state(device) if on_gpu else None
    random.seed(seed)
    np.random.seed(seed % 2**32)  # timm's RandAugment and Mixup draw from numpy
    torch.default_generator.manual_seed(seed)  # the CPU generator only (torch.manual_seed: ~100x slower)
    if on_gpu:
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(cpu)
        if on_gpu:
            torch.cuda.set_rng_state(gpu, device)


class SeededSamples(Dataset):
    """``dataset[index]`` for a key ``(epoch, index)``, its augmentation drawn from RNGs seeded by
    ``(seed, epoch, index)`` (``isolated_rngs``): independent of the worker that loads it, of the number of workers
    (none included), of resumes, and of the order in which the loader prefetches."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with isolated_rngs(_seed_of(self.seed, epoch, index)):
            return self.dataset[index]


class TrainBatches:
    """The training batches: ``loader``'s (on the device, normalised), each randomly erased (``erasing``) and mixed
    (``mixup``: timm's Mixup/CutMix, which also turns the labels into soft targets) with RNGs seeded by
    ``(seed, epoch, position, rank)``, ``position`` being the batch's first sample in the epoch's global order. A
    batch's augmentation is thus the same in a resumed run as in the uninterrupted one. ``batch_sampler`` is the
    loader's ``EpochBatchSampler`` (``set_epoch`` before each epoch)."""

    def __init__(self, loader: Any, seed: int, erasing: Any = None, mixup: Any = None) -> None:
        self.loader, self.seed, self.erasing, self.mixup = loader, seed, erasing, mixup

    @property
    def batch_sampler(self) -> EpochBatchSampler:
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self.loader.batch_sampler
        stride = sampler.batch_size * sampler.world_size  # samples of all ranks per micro-step
        for i, (x, y) in enumerate(self.loader):  # x: (B, C, H, W) float on the device
            if self.erasing is not None or self.mixup is not None:
                position = sampler.start_sample + i * stride
                with isolated_rngs(_seed_of(self.seed, sampler.epoch, position, sampler.rank), x.device):
                    if self.erasing is not None:
                        x = self.erasing(x)
                    if self.mixup is not None:
                        x, y = self.mixup(x, y)  # y: (B,) labels -> (B, num_classes) soft targets
            yield x, y


def ignore_signals(signals: tuple[signal.Signals, ...], owner: int, _worker_id: int = 0) -> None:
    """A loader worker's ``worker_init_fn``: ``signals`` sent by any process but the worker's own training process
    (pid ``owner``; not necessarily the parent, which is a fork server under that start method) are ignored. A
    signal sent to a whole process group (``torchrun``'s agent stopping its ranks, Slurm signalling a job step)
    reaches the workers too; one that killed them would end the training process with ``DataLoader worker ... is
    killed by signal`` before it could write its checkpoint. The training process itself still ends its workers
    with SIGTERM (multiprocessing does at exit, for loaders that were not shut down): from it, the signal keeps its
    default action.

    The signals are blocked in the worker and taken by a thread (``sigwaitinfo``), which sees who sent each."""
    for sig in signals:
        signal.signal(sig, signal.SIG_DFL)  # not the training process's handler, inherited through fork
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)

    def serve() -> None:
        while True:
            info = signal.sigwaitinfo(signals)
            if info.si_pid == owner:  # the training process ends this worker: the default action, as unblocked
                signal.pthread_sigmask(signal.SIG_UNBLOCK, [info.si_signo])
                os.kill(os.getpid(), info.si_signo)

    threading.Thread(target=serve, name="stop-signals", daemon=True).start()


class SignalSafeLoader(DataLoader):
    """A ``DataLoader`` whose workers start with the signals ``ignored`` blocked: they are forked while the calling
    thread blocks them, so every thread a worker ever has (the ones library fork hooks or initialisers start before
    ``worker_init_fn`` runs included) inherits the block, and a stop signal that reaches a worker while it starts up
    stays pending until ``ignore_signals`` takes it. In the training process the block lasts only while ``iter``
    starts the workers (persistent workers: the first ``iter`` only); a signal that arrives then is delivered when
    it ends."""

    def __init__(self, *args: Any, ignored: tuple[signal.Signals, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ignored = ignored

    def __iter__(self) -> Any:
        if not self.ignored or self.num_workers == 0:
            return super().__iter__()
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, self.ignored)
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform reports one), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_num_workers() -> int:
    """Loader workers per process when ``data.num_workers`` is null: the CPUs this process may use, shared by the
    processes of its node (``LOCAL_WORLD_SIZE`` under torchrun), less one for the training loop; at least 1, at
    most 8 (more rarely helps, and each worker holds a copy of the dataset's index)."""
    cpus = usable_cpus()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, cpus // max(local_processes, 1) - 1))


def resolve_num_workers(num_workers: int | None) -> int:
    """``data.num_workers``, or ``default_num_workers()`` for null."""
    return default_num_workers() if num_workers is None else num_workers


def log_unused_samples(num_samples: int, used: int, limited: bool) -> None:
    """Say how many training samples each epoch leaves out (full batches only: the rest of the epoch's order is
    not trained on that epoch; a new order every epoch picks others): a warning when it is more than a tenth, which
    on a small set can be half of it, unless ``limit_train_batches`` asked for fewer."""
    unused = num_samples - used
    if unused <= 0 or limited:
        return
    message = (
        f"each epoch trains {used} of the {num_samples} training samples: the last {unused} "
        f"({100 * unused / num_samples:.0f}%) of every epoch's order do not fill a whole step (batch_size x "
        "processes x optim.grad_accum_steps) and are left out"
    )
    if unused > num_samples / 10:
        _logger.warning(message + ". Lower batch_size to use more of them.")
    else:
        _logger.info(message + ".")


def _on_device(
    dataset: Dataset, data_cfg: Any, device: torch.device, ignored: tuple[signal.Signals, ...], **kwargs: Any
) -> Any:
    """A loader of uint8 batches (persistent workers, timm's ``fast_collate``; workers ignore the signals ``ignored``)
    wrapped in timm's ``PrefetchLoader``: each batch goes to ``device`` (side stream on CUDA) and is converted to
    float and normalised there. The loader's own seeds come from a private generator, not from the global RNG."""
    workers = resolve_num_workers(data_cfg.num_workers)
    loader = SignalSafeLoader(
        dataset,
        ignored=ignored if workers > 0 else (),
        num_workers=workers,
        pin_memory=data_cfg.pin_memory and device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        collate_fn=fast_collate,
        worker_init_fn=functools.partial(ignore_signals, ignored, os.getpid()) if workers > 0 and ignored else None,
        generator=torch.Generator(),  # a new iterator draws its base seed: not from the global RNG
        **kwargs,
    )
    mean, std = tuple(data_cfg.mean), tuple(data_cfg.std)
    return PrefetchLoader(loader, mean, std, channels=data_cfg.in_chans, device=device)


def train_loader(
    dataset: Dataset,
    batch_sampler: EpochBatchSampler,
    data_cfg: Any,
    aug_cfg: Any,
    device: torch.device,
    mixup: Any = None,
    ignored: tuple[signal.Signals, ...] = (),
) -> TrainBatches:
    """The run's training loader (built once): ``batch_sampler`` picks the epoch and the first batch; random erasing
    (``aug.re_prob``/``re_mode``/``re_count``, off at ``re_prob`` 0) and ``mixup`` (a timm ``Mixup`` or None) are
    applied on the device; workers ignore the signals ``ignored`` (the training process's stop signals)."""
    if data_cfg.num_workers is None:
        _logger.info(f"data.num_workers=null: {default_num_workers()} loader worker(s) per process (from its CPUs)")
    erasing = None
    if aug_cfg.re_prob > 0:
        erasing = RandomErasing(aug_cfg.re_prob, mode=aug_cfg.re_mode, max_count=aug_cfg.re_count, device=device)
    seeded = SeededSamples(dataset, batch_sampler.seed)
    loader = _on_device(seeded, data_cfg, device, ignored, batch_sampler=batch_sampler)
    return TrainBatches(loader, batch_sampler.seed, erasing, mixup)


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    data_cfg: Any,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    ignored: tuple[signal.Signals, ...] = (),
) -> Any:
    """Every ``world_size``-th sample from ``rank``: the ranks cover the set exactly once (no padding)."""
    sampler = range(rank, len(dataset), world_size)
    return _on_device(dataset, data_cfg, device, ignored, batch_size=batch_size, sampler=sampler)
