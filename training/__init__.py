"""Helpers of ``train.py``: the config schema (``training.config``) and the datasets and loaders
(``training.data``). The training loop itself is ``train.py``."""
