"""The backbone builder's slots, each a registry of specs like the token mixers (``mixerzoo.mixers.registry``).

| registry | built once per | called as | context the builder offers |
|---|---|---|---|
| ``STEMS`` | model | ``stem(in_chans, dim, ...)`` | ``img_size`` |
| ``DOWNSAMPLES`` | stage 1.. | ``downsample(in_dim, dim, ...)`` | ``grid``, ``img_size`` |
| ``BLOCKS`` | block | ``block(dim, ...)`` | ``in_dim``, ``mixer``, ``drop_path``, ``index``, ``grid``, ``img_size`` |
| ``EXTRAS`` | stage or model | ``extra(...)`` | ``dim``, ``dims``, ``blocks`` |
| ``HEADS`` | model | ``head(dim, num_classes, ...)`` | ``pool_type``, ``drop_rate`` |

A family whose block, stem or head is new registers it (``@BLOCKS.register("name")``) and names it in its specs;
the builder never changes. Modules that change the token grid (stems, downsampling, striding blocks) have a
``stride`` and an ``out_grid((H, W)) -> (H', W')``; the builder reads them to give later layers their grid.
``EXTRAS`` entries say where they attach with a class attribute ``attach``: ``"fusion"`` or ``"averaging"`` (a
stage's), ``"cross_shortcuts"`` or ``"final_conv"`` (the model's).
"""

from __future__ import annotations

from ..mixers.registry import Registry

__all__ = ["BLOCKS", "DOWNSAMPLES", "EXTRAS", "HEADS", "STEMS"]

STEMS = Registry("stem")
DOWNSAMPLES = Registry("downsample")
BLOCKS = Registry("block")
EXTRAS = Registry("extra")
HEADS = Registry("head")
