"""AFFNet-ET, AFFNet-T and AFFNet (Huang et al., "Adaptive Frequency Filters As Efficient Global Token Mixers",
ICCV 2023, arXiv 2307.14008), registered in timm as ``affnet_et``, ``affnet_t`` and ``affnet``. Code followed:
microsoft/TokenMixers, folder "Adaptive Frequency Filters" (``affnet/models/classification/affnet.py``,
``config/affnet.py`` modes ``xx_small`` / ``x_small`` / ``small``, ``affnet/modules/aff_block.py``).

Built by the shared builder (``models.backbone.MetaFormer``), five stages at strides 2-32:

    stem    3x3 conv s2 (3 -> 16) - BN - SiLU
    stage 0 one inverted residual (16 -> c1)                    = official layer_1
    stage 1 three inverted residuals (-> c2, the first s2)      = layer_2
    stage 2-4 [s2 inverted residual -> C_i] + n_i AFF blocks + fusion   = layer_3..5 (n = 2, 4, 3)
    head    1x1 conv-BN-SiLU to min(4 C_4, 960), global average pool, dropout, linear

AFF block (``aff``, ``models/blocks.py``): ``x = x + mixer(norm1(mlp(norm2(x))))`` where ``mlp`` is an
inverted residual with its own skip (expansion 2) and the mixer is the ``aff`` filter with its inner skip;
norms are GroupNorm(1) with bias, eps 1e-5 (cvnets ``layer_norm_2d``, the released configs' choice). Fusion: norm
-> 1x1 conv-BN -> concat with the stage input (after downsampling) -> 1x1 conv-BN-SiLU. All inverted residuals
use BatchNorm and SiLU, expansion 2 (ET) or 4 (T, AFFNet). Parameter counts equal the official ones.

Deviations: the builder's init (trunc-normal 0.02 for conv/linear) instead of cvnets' (kaiming-normal fan-out
convs, xavier-uniform head); BatchNorm instead of the released configs' SyncBatchNorm (convert with
``nn.SyncBatchNorm.convert_sync_batchnorm`` for multi-GPU training). Eval transform (resize 288, center crop
256, bilinear) follows ml-cvnets' MobileViT recipe: the AFFNet configs are not public [UNVERIFIED]. Inputs are
not mean/std-normalised (cvnets only scales to [0, 1]), hence mean 0 / std 1. The released weights are on
OneDrive only, so the cfgs have no URL; load a downloaded file with
``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` (the official key layout is converted).
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, register_layout

__all__: list[str] = []

# dims = (c1, c2, C_2, C_3, C_4); expansion = the official ``mv2_exp_mult`` of every inverted residual
SIZES = {
    "affnet_et": dict(dims=(32, 48, 64, 104, 144), expansion=2),
    "affnet_t": dict(dims=(32, 48, 96, 160, 192), expansion=4),
    "affnet": dict(dims=(32, 64, 128, 256, 320), expansion=4),
}


DEPTHS = (1, 3, 2, 4, 3)


def layout(dims: tuple[int, ...], expansion: float) -> dict[str, Any]:
    conv_block = {"name": "inverted_residual", "expansion": expansion, "act": "silu"}
    aff_block = {
        "name": "aff",
        "norm": "groupnorm1",
        "norm_eps": 1e-5,
        "norm_bias": True,
        "mlp": {"name": "inverted_residual", "ratio": 2.0, "act": "silu"},
    }
    ir_downsample = {"name": "inverted_residual", "stride": 2, "expansion": expansion, "act": "silu"}
    """The builder's arguments for AFFNet with widths ``dims`` and inverted residuals of ``expansion``."""
    return dict(
        depths=DEPTHS,
        dims=dims,
        stem={
            "name": "conv",
            "dim": 16,
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "norm": "batchnorm",
            "norm_eps": 1e-5,
            "norm_bias": True,
            "bias": False,
            "act": "silu",
        },
        block=[{**conv_block, "stride": 1}, {**conv_block, "stride": 2}, aff_block, aff_block, aff_block],
        downsample=[None, None, ir_downsample, ir_downsample, ir_downsample],
        mixer={"name": "aff", "num_groups": 8, "sparsity_threshold": 0.01, "act": "silu", "inner_skip": True},
        head={"name": "linear", "norm": None},
        extras=[
            {
                "name": "fusion",
                "stages": [2, 3, 4],
                "norm": "groupnorm1",
                "norm_eps": 1e-5,
                "norm_bias": True,
                "act": "silu",
            },
            {"name": "final_conv", "out_dim": min(4 * dims[-1], 960), "act": "silu"},
        ],
        img_size=256,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "Adaptive Frequency Filters As Efficient Global Token Mixers",
        "arXiv:2307.14008",
        "https://github.com/microsoft/TokenMixers/tree/main/Adaptive%20Frequency%20Filters",
        "mit",
        input_size=(3, 256, 256),
        pool_size=(8, 8),
        crop_pct=256 / 288,
        interpolation="bilinear",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.ms_in1k": _cfg() for name in SIZES})


OFFICIAL_MODES = {
    "affnet_et": ("AFFNet-ET", "xx_small"),
    "affnet_t": ("AFFNet-T", "x_small"),
    "affnet": ("AFFNet", "small"),
}
for _name, (_title, _mode) in OFFICIAL_MODES.items():
    register_layout(
        _name,
        f"{_title} (official mode {_mode}): inverted residuals, then AFF blocks with fusion; "
        "default input 256, any size works",
        timm=True,
        **layout(**SIZES[_name]),
    )


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return create_metaformer(variant, pretrained, (0, 1, 2, 3, 4), **LAYOUTS.get(variant)(**kwargs))


@register_model
def affnet_et(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """AFFNet-ET (official mode ``xx_small``): 1.44 M params, 73.0 % top-1 at 256."""
    return _create("affnet_et", pretrained, **kwargs)


@register_model
def affnet_t(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """AFFNet-T (official mode ``x_small``): 2.65 M params, 77.0 % top-1 at 256."""
    return _create("affnet_t", pretrained, **kwargs)


@register_model
def affnet(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """AFFNet (official mode ``small``): 5.57 M params, 79.8 % top-1 at 256."""
    return _create("affnet", pretrained, **kwargs)
