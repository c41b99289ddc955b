"""The training library under ``train.py``: the config schema (``config``), datasets and loaders (``data``,
``pathfinder``), the process (``runtime``), the job's state (``state``), checkpoints (``checkpoints``), the loop
(``loop``), stop signals (``signals``), the outputs (``outputs``) and atomic writes (``atomic``). Tools and tests
import these modules by their public names; ``train.py`` composes the config and runs them."""

if not __name__.startswith("mixerzoo."):  # the repository folder imported as a top-level package
    raise ImportError(
        f"`import {__name__}` is the old path: the zoo installs as one package, use `import mixerzoo.{__name__}`."
    )

from mixerzoo.training import pathfinder as _pathfinder  # noqa: F401  (registers data.name=pathfinder)
