"""The MetaFormer families, each layout written once here (Yu et al., "MetaFormer Is Actually What You Need for
Vision", CVPR 2022, arXiv 2111.11418; "MetaFormer Baselines for Vision", TPAMI 2024, arXiv 2210.13452). Code
followed: https://github.com/sail-sg/poolformer and https://github.com/sail-sg/metaformer
(``metaformer_baselines.py``).

- IdentityFormer and RandFormer, registered in timm (``timm.create_model("identityformer_s12")``):
  IdentityFormer mixes with ``identity`` everywhere; RandFormer with ``identity`` in stages 1-2 and a frozen
  ``random`` matrix in stages 3-4 (196 and 49 tokens at 224, so it only takes 224x224 input).
- PoolFormer (v1), PoolFormerV2, ConvFormer and CAFormer, built by the zoo's builder under timm's names but not
  registered in timm: timm already registers those names (``timm.create_model("caformer_s18")`` is timm's own
  model: the same architecture and parameter count, timm's key layout; ``mixerzoo.load_checkpoint`` converts
  between them). ``mixerzoo.create_model("caformer_s18")`` and ``python train.py model=caformer_s18`` build the
  zoo's.

``V2`` is the baselines paper's layout: channel-LN (no bias, eps 1e-6) as stem post-norm and downsampling pre-norm,
GroupNorm(1) block norms without bias, StarReLU MLP (ratio 4) without biases, no LayerScale, ResScale (init 1.0)
in stages 3-4, global average pool -> LayerNorm (with bias) -> linear head. ConvFormer/CAFormer swap in
per-token LayerNorm block norms and the MLP head. ``V1`` is PoolFormer's: no stem/downsample norms, GroupNorm(1)
with bias (eps 1e-5), GELU MLP with biases, LayerScale, GroupNorm(1) on the final map before pooling.
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, merge_options, register_layout

__all__: list[str] = []

SIZES = {
    "s12": dict(depths=(2, 2, 6, 2), dims=(64, 128, 320, 512)),
    "s24": dict(depths=(4, 4, 12, 4), dims=(64, 128, 320, 512)),
    "s36": dict(depths=(6, 6, 18, 6), dims=(64, 128, 320, 512)),
    "m36": dict(depths=(6, 6, 18, 6), dims=(96, 192, 384, 768)),
    "m48": dict(depths=(8, 8, 24, 8), dims=(96, 192, 384, 768)),
}
CONVFORMER_SIZES = {  # ConvFormer and CAFormer
    "s18": dict(depths=(3, 3, 9, 3), dims=(64, 128, 320, 512)),
    "s36": dict(depths=(3, 12, 18, 3), dims=(64, 128, 320, 512)),
    "m36": dict(depths=(3, 12, 18, 3), dims=(96, 192, 384, 576)),
    "b36": dict(depths=(3, 12, 18, 3), dims=(128, 256, 512, 768)),
}
POOLFORMER_LAYER_SCALE = {"s12": 1e-5, "s24": 1e-5, "s36": 1e-6, "m36": 1e-6, "m48": 1e-6}

_CHANNEL_LN = {"norm": "layernorm", "norm_eps": 1e-6, "norm_bias": False}
V2 = dict(
    stem={"name": "conv", "kernel_size": 7, "stride": 4, "padding": 2, **_CHANNEL_LN},
    downsample={"name": "conv", "kernel_size": 3, "stride": 2, "padding": 1, **_CHANNEL_LN},
    block={
        "name": "metaformer",
        "norm": "groupnorm1",
        "norm_eps": 1e-6,
        "norm_bias": False,
        "mlp": {"name": "mlp", "ratio": 4, "act": "starrelu", "bias": False},
        "layer_scale_init": None,
        "res_scale_init": [None, None, 1.0, 1.0],  # one value per stage
    },
    head={"name": "linear", "norm": "layernorm", "norm_before_pool": False},
)
CONVFORMER = dict(  # V2 with per-token LayerNorm block norms and the MLP head
    block={"norm": "layernorm"},
    head={"name": "mlp", "hidden_ratio": 4, "mlp_norm_eps": 1e-5, "dropout": 0.0},
)
V1 = dict(
    stem={"name": "conv", "kernel_size": 7, "stride": 4, "padding": 2, "norm": None},
    downsample={"name": "conv", "kernel_size": 3, "stride": 2, "padding": 1, "norm": None},
    block={
        "name": "metaformer",
        "norm": "groupnorm1",
        "norm_eps": 1e-5,
        "norm_bias": True,
        "mlp": {"name": "mlp", "ratio": 4, "act": "gelu", "bias": True},
        "res_scale_init": None,
    },
    head={"name": "linear", "norm": "groupnorm1", "norm_eps": 1e-5, "norm_before_pool": True},
)


def v2_layout(**options: Any) -> dict[str, Any]:
    """The ``V2`` layout with ``options`` merged in (``merge_options``): the comparison backbones' base too."""
    return merge_options(V2, options)


for _size, _shape in SIZES.items():
    _name = _size.upper()
    register_layout(
        f"identityformer_{_size}",
        f"IdentityFormer-{_name}: identity mixing in every stage",
        timm=True,
        **v2_layout(mixer="identity", **_shape),
    )
    register_layout(
        f"randformer_{_size}",
        f"RandFormer-{_name}: identity in stages 1-2, frozen random mixing in "
        "3-4; 224x224 input only (196- and 49-token matrices)",
        timm=True,
        **v2_layout(mixer=["identity", "identity", "random", "random"], **_shape),
    )
    register_layout(
        f"poolformerv2_{_size}",
        f"PoolFormerV2-{_name}: pooling in every stage (timm's name, the zoo's build)",
        **v2_layout(mixer="pooling", **_shape),
    )
    register_layout(
        f"poolformer_{_size}",
        f"PoolFormer-{_name} (v1): pooling, LayerScale "
        f"{POOLFORMER_LAYER_SCALE[_size]:g} (timm's name, the zoo's build)",
        **merge_options(V1, dict(mixer="pooling", **_shape, block={"layer_scale_init": POOLFORMER_LAYER_SCALE[_size]})),
    )
for _size, _shape in CONVFORMER_SIZES.items():
    _name = _size.upper()
    register_layout(
        f"convformer_{_size}",
        f"ConvFormer-{_name}: separable convolutions in every stage, "
        "per-token LayerNorm, MLP head (timm's name, the zoo's build)",
        **v2_layout(mixer="sepconv", **CONVFORMER, **_shape),
    )
    register_layout(
        f"caformer_{_size}",
        f"CAFormer-{_name}: separable convolutions in stages 1-2, attention in "
        "3-4, MLP head (timm's name, the zoo's build)",
        **v2_layout(mixer=["sepconv", "sepconv", "attention", "attention"], **CONVFORMER, **_shape),
    )


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


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return create_metaformer(variant, pretrained, (0, 1, 2, 3), **LAYOUTS.get(variant)(**kwargs))


def _identityformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return _create(f"identityformer_{size}", pretrained, **kwargs)


def _randformer(size: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return _create(f"randformer_{size}", pretrained, **kwargs)


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
