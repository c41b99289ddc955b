"""Helpers of ``train.py``: the config schema (``training.config``) and the datasets and loaders
(``training.data``). The training loop itself is ``train.py``."""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from mixerzoo.training import pathfinder as _pathfinder  # noqa: F401  (registers data.name=pathfinder)
