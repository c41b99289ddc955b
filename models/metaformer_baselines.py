"""IdentityFormer and RandFormer (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024, arXiv 2210.13452),
registered in timm. Code followed: https://github.com/sail-sg/metaformer (``metaformer_baselines.py``).

Both use the builder's default (v2) layout: channel-LN stem/downsample norms, GroupNorm(1) block norms without
bias (eps 1e-6), StarReLU MLP without bias, ResScale in stages 3-4, pool -> LayerNorm -> Linear head.
IdentityFormer mixes with ``identity`` everywhere; RandFormer with ``identity`` in stages 1-2 and a frozen
``random`` matrix in stages 3-4 (196 and 49 tokens at 224, so it only takes 224x224 input).

timm already registers PoolFormer v1/v2, ConvFormer and CAFormer; the zoo's builder-made versions of those are
the Hydra configs ``configs/model/<name>.yaml``.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg

__all__: list[str] = []

SIZES = {
    "s12": dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512)),
    "s24": dict(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512)),
    "s36": dict(depths=(6, 6, 18, 6), dims=(64, 128, 320, 512)),
    "m36": dict(depths=(6, 6, 18, 6), dims=(96, 192, 384, 768)),
    "m48": dict(depths=(8, 8, 24, 8), dims=(96, 192, 384, 768)),
}


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "MetaFormer Baselines for Vision",
        "arXiv:2210.13452",
        "https://github.com/sail-sg/metaformer",
        "apache-2.0",
        url=url,
        crop_pct=1.0,
        **kwargs,
    )


_HF = "https://huggingface.co/sail/dl/resolve/main"
default_cfgs = generate_default_cfgs(
    {
        **{f"identityformer_{s}.sail_in1k": _cfg(f"{_HF}/identityformer/identityformer_{s}.pth") for s in SIZES},
        **{
            f"randformer_{s}.sail_in1k": _cfg(f"{_HF}/randformer/randformer_{s}.pth", fixed_input_size=True)
            for s in SIZES
        },
    }
)


# the builder's defaults plus ResScale (init 1) in stages 3-4
V2_BLOCK = {"name": "metaformer", "res_scale_init": [None, None, 1.0, 1.0]}


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return create_metaformer(variant, pretrained, (0, 1, 2, 3), **{"block": V2_BLOCK, **kwargs})


def _identityformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return _create(f"identityformer_{size}", pretrained, **{**SIZES[size], "mixer": "identity", **kwargs})


def _randformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    mixer = ["identity", "identity", "random", "random"]
    return _create(f"randformer_{size}", pretrained, **{**SIZES[size], "mixer": mixer, **kwargs})


@register_model
def identityformer_s12(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _identityformer("s12", pretrained, **kwargs)


@register_model
def identityformer_s24(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _identityformer("s24", pretrained, **kwargs)


@register_model
def identityformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _identityformer("s36", pretrained, **kwargs)


@register_model
def identityformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _identityformer("m36", pretrained, **kwargs)


@register_model
def identityformer_m48(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _identityformer("m48", pretrained, **kwargs)


@register_model
def randformer_s12(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _randformer("s12", pretrained, **kwargs)


@register_model
def randformer_s24(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _randformer("s24", pretrained, **kwargs)


@register_model
def randformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _randformer("s36", pretrained, **kwargs)


@register_model
def randformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _randformer("m36", pretrained, **kwargs)


@register_model
def randformer_m48(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _randformer("m48", pretrained, **kwargs)
