"""The backbone builder's slots and the named layouts, each a registry of specs like the token mixers
(``mixerzoo.registry.Registry``).

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

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..registry import Registry, plain

__all__ = ["BLOCKS", "DOWNSAMPLES", "EXTRAS", "HEADS", "LAYOUTS", "STEMS", "Layout", "merge_options", "register_layout"]

STEMS = Registry("stem")
DOWNSAMPLES = Registry("downsample")
BLOCKS = Registry("block")
EXTRAS = Registry("extra")
HEADS = Registry("head")
LAYOUTS = Registry("model")


def merge_options(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: mappings merge key by key (so ``block={"norm": "layernorm"}`` changes one
    option of the block spec), any other value (a name, a list) replaces the base's. Neither input is changed."""
    merged = copy.deepcopy(plain(dict(base)))
    for key, value in plain(dict(overrides)).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Layout:
    """A named model: the builder's (``MetaFormer``'s) options, written once, in Python, beside its family.

    ``timm``: the family registers the name in timm (``timm.create_model(name)`` builds this layout, with its
    pretrained cfg); False for the zoo's builder versions of timm's own names (timm's ``caformer_s18`` stays
    timm's) and for the comparison backbones. ``module``: the family file that defines it."""

    options: Mapping[str, Any]
    summary: str
    timm: bool
    module: str

    def __call__(self, **overrides: Any) -> dict[str, Any]:
        """The layout's options with ``overrides`` merged in (``merge_options``)."""
        return merge_options(self.options, overrides)


def register_layout(name: str, summary: str, *, timm: bool = False, **options: Any) -> Layout:
    """Register the named layout ``name`` (``MetaFormer`` keyword arguments ``options``) from its family's module."""
    caller = inspect.currentframe().f_back  # the family module registering it
    layout = Layout(plain(options), summary, timm, caller.f_globals["__name__"] if caller else "")
    LAYOUTS.register(name)(layout)
    return layout
