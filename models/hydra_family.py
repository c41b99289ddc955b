"""Hydra-ViT (Hwang et al., "Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers",
NeurIPS 2024, arXiv 2407.09941, §4.3 / Table 5 / Appendix D.2), registered in timm as ``hydra_vit_b`` and
``hydra_vit_s``. Code followed for the layer: goombalab/hydra ``hydra/modules/hydra.py`` (the ImageNet code was not
released; the authors point to state-spaces/s4's ViT with Hydra as a drop-in, goombalab/hydra #1).

Built by the shared builder (``models.backbone.MetaFormer``) as one isotropic stage:

    stem   16x16 conv, stride 16 (patch embedding, no norm)  -> 14 x 14 = 196 tokens at 224
    blocks depth x [x = x + drop_path(hydra(LayerNorm(x)))]    mixer-only: no channel MLP (``mlp=None``)
    head   global average pool -> LayerNorm -> linear

Feature levels (``feature_info``, ``forward_intermediates``, ``features_only``) are the blocks, as in timm's ViT
(``features_only`` defaults to the last three, through ``forward_intermediates``). No positional embedding and no
class token: the Hydra layer reads the 14 x 14 grid row-major ("Hydra simply
flattens images"). ``hydra_vit_b``: ViT-B width 768 and 24 Hydra layers (Mamba and Hydra use 24 layers "to match
parameters" with the 12-layer ViT-B) with the default layer (d_state 64, d_conv 7, expand 2, head_dim 64):
93.2 M parameters, against the paper's 91 M (24 x 3,825,224 = 91.8 M in the mixers alone; the 91 M of Table 5
is probably rounded down from the mixers or counted without embedding/head). ``hydra_vit_s`` (ours, not in the
paper): ViT-S width 384, 24 layers, same layer defaults (24.9 M params, vs ViT-S's 22 M).

[UNVERIFIED] pre-norm LayerNorm blocks (eps 1e-6, as timm's ViT) and pooled-then-normed features, from the s4 repo
ViT the authors used; mean pooling per the s4 ``use_cls_token=false`` config. No weights were released (the
HF ``goombalab/hydra`` checkpoint is the BERT model), so the cfgs have no URL.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, register_layout

__all__: list[str] = []

SIZES = {
    "hydra_vit_s": dict(depths=(24,), dims=(384,)),
    "hydra_vit_b": dict(depths=(24,), dims=(768,)),
}

LAYOUT = dict(
    stem={"name": "conv", "kernel_size": 16, "stride": 16, "padding": 0, "norm": None},
    mixer={"name": "hydra", "d_state": 64, "d_conv": 7, "expand": 2, "head_dim": 64},
    block={"name": "metaformer", "norm": "layernorm", "norm_eps": 1e-6, "norm_bias": True, "mlp": None},
    head={"name": "linear", "norm": "layernorm", "norm_eps": 1e-6},
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "Hydra: Bidirectional State Space Models Through Generalized Matrix Mixers",
        "arXiv:2407.09941",
        "https://github.com/goombalab/hydra",
        "mit",
        pool_size=(14, 14),
        crop_pct=0.9,
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in SIZES})


register_layout(
    "hydra_vit_s",
    "Hydra-ViT-S (ours, not in the paper): width 384, 24 mixer-only Hydra layers, 16x16 patches",
    timm=True,
    **LAYOUT,
    **SIZES["hydra_vit_s"],
)
register_layout(
    "hydra_vit_b",
    "Hydra-ViT-B (Table 5): width 768, 24 mixer-only Hydra layers, 16x16 patches",
    timm=True,
    **LAYOUT,
    **SIZES["hydra_vit_b"],
)


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    options = LAYOUTS.get(variant)(**kwargs)
    depth = options["depths"][0]
    last_three = tuple(range(max(depth - 3, 0), depth))  # the feature levels are the blocks; timm's ViT default
    return create_metaformer(variant, pretrained, last_three, default_feature_cls="getter", **options)


@register_model
def hydra_vit_s(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Hydra-ViT-S (ours): width 384, 24 mixer-only Hydra layers, 16x16 patches; 24.9 M params."""
    return _create("hydra_vit_s", pretrained, **kwargs)


@register_model
def hydra_vit_b(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Hydra-ViT-B (Table 5): width 768, 24 mixer-only Hydra layers, 16x16 patches; 93.2 M params (paper: 91 M),
    81.0 % top-1 (81.6 % with EMA) on ImageNet-1K at 224."""
    return _create("hydra_vit_b", pretrained, **kwargs)
