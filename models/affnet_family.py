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

AFF block (``mlp_first`` + ``single_residual``): ``x = x + mixer(norm1(mlp(norm2(x))))`` where ``mlp`` is an
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

from .backbone import MetaFormer, create_metaformer

__all__: list[str] = []

# dims = (c1, c2, C_2, C_3, C_4); ir_expansion = the official ``mv2_exp_mult``
SIZES = {
    "affnet_et": dict(dims=(32, 48, 64, 104, 144), ir_expansion=2),
    "affnet_t": dict(dims=(32, 48, 96, 160, 192), ir_expansion=4),
    "affnet": dict(dims=(32, 64, 128, 256, 320), ir_expansion=4),
}

LAYOUT = dict(
    depths=(1, 3, 2, 4, 3),
    block_type=("inverted_residual", "inverted_residual", "metaformer", "metaformer", "metaformer"),
    stem_dim=16,
    stem_kernel_size=3,
    stem_stride=2,
    stem_padding=1,
    stem_norm="batchnorm",
    stem_bias=False,
    stem_act="silu",
    conv_act="silu",
    downsample_type="inverted_residual",
    mixer={"name": "aff", "num_groups": 8, "sparsity_threshold": 0.01, "act": "silu", "inner_skip": True},
    norm="groupnorm1",
    norm_eps=1e-5,
    norm_bias=True,
    mlp_type="inverted_residual",
    mlp_ratio=2.0,
    mlp_act="silu",
    mlp_first=True,
    single_residual=True,
    layer_scale_init=None,
    res_scale_init=None,
    stage_fusion=(False, False, True, True, True),
    head_norm=None,
    img_size=256,
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 256, 256),
        "pool_size": (8, 8),
        "crop_pct": 256 / 288,
        "crop_mode": "center",
        "interpolation": "bilinear",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "mit",
        "paper_name": "Adaptive Frequency Filters As Efficient Global Token Mixers",
        "paper_ids": "arXiv:2307.14008",
        "origin_url": "https://github.com/microsoft/TokenMixers/tree/main/Adaptive%20Frequency%20Filters",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.ms_in1k": _cfg() for name in SIZES})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    size = SIZES[variant]
    options = {**LAYOUT, **size, "final_conv_dim": min(4 * size["dims"][-1], 960), **kwargs}
    return create_metaformer(variant, pretrained, (0, 1, 2, 3, 4), **options)


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
