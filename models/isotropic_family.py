"""Isoformer: an isotropic MetaFormer (one token grid, no downsampling) in which the token mixer's receptive field
is its own, the backbone of the capability screen (``sweep=probes``, ``docs/results/capability-screen.md``).
Registered in timm as ``isoformer_tiny``; ours, not a paper's model.

Built by the shared builder (``models.backbone.MetaFormer``) as one isotropic stage:

    stem   4x4 conv, stride 4 (non-overlapping patches) -> LayerNorm   32 x 32 image -> 8 x 8 tokens, one per cell
    blocks depth x [x = x + mixer(LN(x)); x = x + mlp(LN(x))]          StarReLU MLP, ratio 4
    head   global average pool -> LayerNorm -> linear

Why this layout. The hierarchical ``metaformer_tiny`` downsamples to a 2 x 2 grid, where any mixer (even 3 x 3
pooling) sees every token, so the mixer hardly matters. Here nothing but the mixer moves information between
tokens: the stem's patches do not overlap and carry no position, the block norms are per-token LayerNorms (the
family default GroupNorm(1) normalises over the whole grid, itself a global exchange of statistics), and the head
pools only at the end. So an ``identity`` Isoformer is a bag of independent patches read out by a sum, and what a
mixer adds on top of that is what the probes measure. No positional embedding (as in the MetaFormer papers): a
mixer that needs positions must make them (zero padding, scan order, per-position weights).

``isoformer_tiny``: width 32, 4 blocks, ``mixer`` pooling by default (every registered mixer fits: grid-bound ones
are built for the grid of ``img_size``); about 0.05 M parameters with pooling. The feature levels
(``feature_info``, ``forward_intermediates``) are the blocks, as in ``hydra_vit_*``.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, register_layout

__all__: list[str] = []

SIZES = {
    "isoformer_tiny": dict(depths=(4,), dims=(32,), img_size=32),
}

LAYOUT = dict(
    stem={"name": "conv", "kernel_size": 4, "stride": 4, "padding": 0, "norm": "layernorm", "norm_bias": True},
    mixer="pooling",
    block={
        "name": "metaformer",
        "norm": "layernorm",
        "norm_eps": 1e-6,
        "norm_bias": True,
        "mlp": {"name": "mlp", "ratio": 4, "act": "starrelu", "bias": False},
    },
    head={"name": "linear", "norm": "layernorm"},
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "Isoformer: the isotropic backbone of the zoo's capability screen",
        "",
        "",
        "apache-2.0",
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        mean=(0.0, 0.0, 0.0),  # the probes: blank 0, ink 1 (configs/data/probe_*.yaml, one channel)
        std=(1.0, 1.0, 1.0),
        first_conv="stem.conv",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in SIZES})


register_layout(
    "isoformer_tiny",
    "Isoformer-Tiny (ours): an isotropic backbone, 4x4 patches (8 x 8 tokens at 32 px), width 32, 4 blocks, any "
    "token mixer; the capability screen's backbone",
    timm=True,
    **LAYOUT,
    **SIZES["isoformer_tiny"],
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    options = LAYOUTS.get(variant)(**kwargs)
    depth = options["depths"][0]
    return create_metaformer(variant, pretrained, tuple(range(depth)), default_feature_cls="getter", **options)


@register_model
def isoformer_tiny(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Isoformer-Tiny: 4x4 patches (8 x 8 tokens at 32 px), width 32, 4 blocks, any token mixer (``mixer=``)."""
    return _create("isoformer_tiny", pretrained, **kwargs)
