"""ViM2, the vision model of MambaMixer (Behrouz, Santacatterina, Zabih, "MambaMixer: Efficient Selective State
Space Models with Dual Token and Channel Selection", 2024, arXiv 2403.19888 v1, appendix table of scales),
registered in timm as ``vim2_t``, ``vim2_s`` and ``vim2_b``. There is no official code (MambaMixer/M2 #1); this is
a re-implementation from the v1 text, built by the shared builder (``models.backbone.MetaFormer``):

    stem    4x4 conv, stride 4 -> LayerNorm                                   (56 x 56 at 224)
    stage i LayerNorm -> 2x2 conv, stride 2 (i > 0; Swin/VMamba patch merging as a conv)
            token depth d_i, channel depth d_i / 2 (token, token, channel, token, token, channel, ...):
              y = x + mamba_mixer(LN(x))                           selective token mixer, 4 cross-scan directions
              y = x + mamba_channel_mixer(LN(x))  every 2nd block   selective channel mixer, width w_i
            each sub-layer input = learnable weighted average of all earlier sub-layer outputs in the stage
            (``weighted_average``; identity init = a plain residual network)
    head    global average pool -> LayerNorm -> linear

| model | widths | token depths | channel depths | channel widths | params (ours) | published |
|---|---|---|---|---|---|---|
| vim2_t | 96/192/384/768 | 2/2/6/2 | 1/1/3/1 | 192/384/768/768 | 22.45 M | 20 M |
| vim2_s | 96/192/384/768 | 2/2/18/2 | 1/1/9/1 | 192/384/768/768 | 40.35 M | 43 M |
| vim2_b | 128/256/512/1024 | 2/2/18/2 | 1/1/9/1 | 256/512/1024/1024 | 69.66 M | 74 M |

Parameters: the token mixers alone (VMamba's SS2D, d_state 16, expand 2) are 17.0 / 31.3 / 54.0 M. The published
v1 numbers cannot all be met by one per-block design: VMamba-T (2/2/9/2 of the same token blocks, no channel
mixer) already has 22 M, so ViM2-T's 20 M with 2/2/6/2 leaves ~0.6 M for its six channel mixers, while ViM2-S
(43 M, 12 more token and 6 more channel blocks at width 384) needs ~1.5 M per stage-3 channel mixer. Our
channel mixer (two CW-Linears, C -> w -> C, plus a small S6) lands between: T +12 %, S -6 %, B -6 %.

[UNVERIFIED] (not in the v1 text): LayerNorm eps 1e-5 everywhere (PyTorch default, as VMamba); the 2x2 conv
downsampling with a pre-norm; the order token, token, channel inside a stage; the token mixer's VMamba details
(``mixers/mamba_mixer.py``); the channel mixer's per-token interpretation; the weighted-average init. The stem
table row prints "112 x 112", contradicting stride 4; we use stride 4 (56 x 56 stage 1, as the 56/28/14/7 rows).
"""

from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from .backbone import MetaFormer, create_metaformer, pretrained_cfg
from .registry import LAYOUTS, register_layout

__all__: list[str] = []


def _size(dims: tuple[int, ...], depths: tuple[int, ...], channel_widths: tuple[int, ...]) -> dict[str, Any]:
    block = {"name": "metaformer", "norm": "layernorm", "norm_eps": 1e-5, "norm_bias": True, "mlp_every": 2}
    return dict(
        dims=dims,
        depths=depths,
        block=[{**block, "mlp": {"name": "mamba_channel_mixer", "hidden_dim": w}} for w in channel_widths],
    )


SIZES = {
    "vim2_t": _size((96, 192, 384, 768), (2, 2, 6, 2), (192, 384, 768, 768)),
    "vim2_s": _size((96, 192, 384, 768), (2, 2, 18, 2), (192, 384, 768, 768)),
    "vim2_b": _size((128, 256, 512, 1024), (2, 2, 18, 2), (256, 512, 1024, 1024)),
}

LAYOUT = dict(
    stem={
        "name": "conv",
        "kernel_size": 4,
        "stride": 4,
        "padding": 0,
        "norm": "layernorm",
        "norm_eps": 1e-5,
        "norm_bias": True,
    },
    downsample={
        "name": "conv",
        "kernel_size": 2,
        "stride": 2,
        "padding": 0,
        "norm": "layernorm",
        "norm_eps": 1e-5,
        "norm_bias": True,
    },
    mixer={"name": "mamba_mixer", "d_state": 16, "expand": 2, "d_conv": 3},
    extras=[{"name": "weighted_average"}],
    head={"name": "linear", "norm": "layernorm", "norm_eps": 1e-5},
)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return pretrained_cfg(
        "MambaMixer: Efficient Selective State Space Models with Dual Token and Channel Selection",
        "arXiv:2403.19888",
        "https://github.com/MambaMixer/M2",
        "other",  # no official code or weights; this re-implementation is the zoo's
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in SIZES})


for _name in SIZES:
    register_layout(
        _name,
        f"ViM2-{_name[5:].upper()} (MambaMixer): selective token mixers, selective channel mixers "
        "every second block, weighted averaging inside each stage; no official code or weights",
        timm=True,
        **LAYOUT,
        **SIZES[_name],
    )


def _create(variant: str, pretrained: bool, **kwargs: Any) -> MetaFormer:
    return create_metaformer(variant, pretrained, (0, 1, 2, 3), **LAYOUTS.get(variant)(**kwargs))


@register_model
def vim2_t(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """ViM2-T: widths 96-768, token/channel depths 2/2/6/2 and 1/1/3/1; 22.45 M params (v1: 20 M, 82.7 % top-1)."""
    return _create("vim2_t", pretrained, **kwargs)


@register_model
def vim2_s(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """ViM2-S: widths 96-768, token/channel depths 2/2/18/2 and 1/1/9/1; 40.35 M params (v1: 43 M, 83.7 %)."""
    return _create("vim2_s", pretrained, **kwargs)


@register_model
def vim2_b(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    """ViM2-B: widths 128-1024, token/channel depths 2/2/18/2 and 1/1/9/1; 69.66 M params (v1: 74 M, 83.9 %)."""
    return _create("vim2_b", pretrained, **kwargs)
