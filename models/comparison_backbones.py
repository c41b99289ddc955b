"""The like-for-like comparison backbones: the MetaFormer baselines' V2 layout (``metaformer_baselines.V2``) with
any token mixer, so that mixers compare in one architecture (``python train.py model=metaformer_s12
model.mixer=<name>``). Built by the zoo's builder; not registered in timm (these are not published models).

- ``metaformer_s12``: the PoolFormerV2-S12 layout (2/2/6/2 blocks, widths 64-512), pooling by default.
- ``metaformer_tiny``: a 3-stage version for small inputs (about 0.44 M parameters, the default model): a 5x5
  stride-4 stem turns 32x32 digits into an 8x8 token grid (the digits' own resolution); stages at 8x8, 4x4 and 2x2,
  ResScale in stages 2-3.
- ``<mixer>_metaformer_s12``: the S12 layout with one mixer family's options set for it:
  ``aff`` (8 channel groups, SiLU, softshrink 0.01; the filter's inner skip off, since the block has its own
  residual: ``model.mixer.inner_skip=true`` restores the official ``+ u``); ``hydra`` (tokens row-major per stage;
  widths 64-512 give d_inner 128-1024, head_dim 32 gives 4/8/20/32 heads, d_state 16 suits the narrow early
  stages; the ViT model keeps the official 64/64); ``mamba_mixer`` (4 cross-scan directions, d_state 16, expand 2,
  depthwise 3x3 conv; the StarReLU MLP kept); ``strip_mlp`` (channel patches by the official rule, P = 2 for widths
  divisible by 80, else 4; its strip MLPs fit the stage grids of ``img_size`` only, ``model.mixer.resize=true``
  interpolates them; the block keeps its GroupNorm pre-norm, where the official block has none).
"""

from __future__ import annotations

from .metaformer_baselines import SIZES, v2_layout
from .registry import register_layout

__all__: list[str] = []

register_layout(
    "metaformer_s12",
    "the comparison backbone: PoolFormerV2-S12's layout with any mixer",
    **v2_layout(mixer="pooling", **SIZES["s12"]),
)
register_layout(
    "metaformer_tiny",
    "a 3-stage comparison backbone for 32x32 inputs (8x8 token grid, about 0.44 M parameters)",
    **v2_layout(
        mixer="pooling",
        depths=(2, 2, 2),
        dims=(32, 64, 128),
        stem={"kernel_size": 5, "stride": 4, "padding": 2},
        block={"res_scale_init": [None, 1.0, 1.0]},
        img_size=32,  # the default for Python use; train.py builds every zoo model for data.img_size
    ),
)
MIXER_OPTIONS = {
    "aff": {"name": "aff", "inner_skip": False},
    "hydra": {"name": "hydra", "d_state": 16, "head_dim": 32, "d_conv": 7, "expand": 2},
    "mamba_mixer": {"name": "mamba_mixer", "d_state": 16, "expand": 2, "d_conv": 3},
    "strip_mlp": {"name": "strip_mlp", "resize": False},
}
for _mixer, _spec in MIXER_OPTIONS.items():
    register_layout(
        f"{_mixer}_metaformer_s12",
        f"the comparison backbone with the {_mixer} mixer",
        **v2_layout(mixer=_spec, **SIZES["s12"]),
    )
