"""Datasets of generated grayscale images held in memory (Pathfinder, the capability probes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["GrayscaleArrayDataset"]


class GrayscaleArrayDataset(Dataset):
    """Generated grayscale images held as one uint8 array: ``images`` (N, H, W), ``targets`` (N ints), read as PIL
    images in ``mode`` (``L``, or ``RGB`` for 3 input channels) through ``transform``. Pathfinder and the probes."""

    images: np.ndarray
    targets: list[int]
    mode: str
    transform: Any

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index], mode="L")
        if self.mode != "L":
            img = img.convert(self.mode)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]
