"""Strip-MLP-T*, -T, -S and -B (Cao et al., "Strip-MLP: Efficient Token Interaction for Vision MLP", ICCV 2023,
arXiv 2307.11458), registered in timm as ``stripmlp_t_light``, ``stripmlp_t``, ``stripmlp_s`` and ``stripmlp_b``.
Code followed: Med-Process/Strip_MLP, ``models/strip_mlp.py`` (``StripMLPNet``) and ``configs/smlp_*.yaml``.

Built by the shared builder (``models.backbone.MetaFormer``), four stages at strides 4-32, widths C, 2C, 4C, 8C:

    stem     4x4 conv, stride 4, no bias, no norm                     (official patch_embed)
    stage i  [2x2 conv, stride 2, no bias, no norm] + depth_i blocks  (merging1-3, blocks1-4)
    block    x = x + drop_path(StripMixing(x));  x = x + drop_path(ChannelMixing(x))      (no block norms)
    shortcut the inputs of stages 1 and 2 reach every later stage's input through grouped 2x2 stride-2 convs
             (conv_s1_28, conv_s1_14; conv_s2_14)
    head     BatchNorm on the map -> global average pool -> linear

StripMixing is the ``strip_mlp`` mixer (``mixers/strip_mlp.py``; P = 2 channel patches for widths divisible by
80, else 4); ChannelMixing the ConvNeXt-V2 branch ``convnext_grn`` (dw 7x7 without bias -> LayerNorm (eps 1e-5)
-> Linear (3C) -> GELU -> GRN -> Linear). Drop path is the same in every block (the official ``BasicBlock``
hard-codes 0.1); ``drop_path_rate`` sets it (default 0, as timm models do; the experiment configs use 0.1).
Parameter counts equal the official ones.

The strip MLPs fix the grid, so the models take only their ``img_size`` (default 224; ``fixed_input_size``
in the pretrained cfg). ``img_size`` builds a model for another size (any multiple of 32, also non-square); or
build with ``mixer={"name": "strip_mlp", "resize": True}`` to run at other sizes by interpolating the strip
weights (off by default; beyond the paper, see ``mixers/strip_mlp.py``).

Deviations: the builder's init (trunc-normal 0.02 for conv/linear layers outside the strip layers) instead of
PyTorch's defaults; unused official options (``drop_rate`` of the channel MLP, ``patch_norm``) are absent.
The released weights are on Baidu Pan only, so the cfgs have no URL; load a downloaded file with
``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` (the official key layout is converted).
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, register_layout

__all__: list[str] = []

SIZES = {
    "stripmlp_t_light": dict(depths=(2, 2, 6, 2), dims=(80, 160, 320, 640)),
    "stripmlp_t": dict(depths=(2, 2, 12, 2), dims=(80, 160, 320, 640)),
    "stripmlp_s": dict(depths=(2, 2, 18, 2), dims=(96, 192, 384, 768)),
    "stripmlp_b": dict(depths=(2, 2, 18, 2), dims=(112, 224, 448, 896)),
}

LAYOUT = dict(
    stem={"name": "conv", "kernel_size": 4, "stride": 4, "padding": 0, "norm": None, "bias": False},
    downsample={"name": "conv", "kernel_size": 2, "stride": 2, "padding": 0, "norm": None, "bias": False},
    mixer="strip_mlp",
    block={
        "name": "metaformer",
        "norm": None,
        "mlp": {
            "name": "convnext",
            "ratio": 3.0,
            "act": "gelu",
            "bias": True,
            "conv_bias": False,
            "grn": True,
            "norm_eps": 1e-5,
        },
    },
    extras=[{"name": "cross_stage_shortcuts", "sources": (1, 2), "kernel_size": 2, "stride": 2, "padding": 0}],
    drop_path_schedule="constant",
    head={"name": "linear", "norm": "batchnorm", "norm_eps": 1e-5, "norm_before_pool": True},
    img_size=224,
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "Strip-MLP: Efficient Token Interaction for Vision MLP",
        "arXiv:2307.11458",
        "https://github.com/Med-Process/Strip_MLP",
        "mit",
        fixed_input_size=True,
        crop_pct=224 / 256,
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg() for name in SIZES})


TITLES = {
    "stripmlp_t_light": "Strip-MLP-T* (light tiny)",
    "stripmlp_t": "Strip-MLP-T",
    "stripmlp_s": "Strip-MLP-S",
    "stripmlp_b": "Strip-MLP-B",
}
for _name, _title in TITLES.items():
    register_layout(
        _name,
        f"{_title}: strip MLPs for one input size (224 by default; img_size or mixer.resize=true for others)",
        timm=True,
        **LAYOUT,
        **SIZES[_name],
    )


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    # the cross-stage shortcuts live outside the stages, so features come from forward_intermediates
    options = LAYOUTS.get(variant)(**kwargs)
    return create_metaformer(variant, pretrained, (0, 1, 2, 3), default_feature_cls="getter", **options)


@register_model
def stripmlp_t_light(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Strip-MLP-T* ("light tiny"): 18.24 M params, 2.53 GMACs, 81.2 % top-1 at 224."""
    return _create("stripmlp_t_light", pretrained, **kwargs)


@register_model
def stripmlp_t(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Strip-MLP-T: 24.90 M params, 3.66 GMACs, 82.2 % top-1 at 224."""
    return _create("stripmlp_t", pretrained, **kwargs)


@register_model
def stripmlp_s(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Strip-MLP-S: 42.57 M params, 6.83 GMACs, 83.3 % top-1 at 224."""
    return _create("stripmlp_s", pretrained, **kwargs)


@register_model
def stripmlp_b(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """Strip-MLP-B: 57.22 M params, 9.21 GMACs, 83.6 % top-1 at 224."""
    return _create("stripmlp_b", pretrained, **kwargs)
