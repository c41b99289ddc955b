"""The shared MetaFormer backbone builder.

    stem -> [stage_i = downsample_i -> depth_i x Block(mixer_i) -> optional fusion]_i -> optional final conv -> head

Block (pre-norm, Yu et al. "MetaFormer Is Actually What You Need for Vision" and "MetaFormer Baselines"):

    x = res_scale1 * x + layer_scale1 * drop_path(mixer(norm1(x)))
    x = res_scale2 * x + layer_scale2 * drop_path(mlp(norm2(x)))

(any scale whose init value is None is the identity). Each stage takes its own mixer spec (see
``mixers.create_mixer``); the builder never looks at what a mixer is. Options for other layouts (all off by
default): the channel MLP first (``mlp_first``), one residual around both sub-layers (``single_residual``), an
inverted-residual channel mixer (``mlp_type``), convolutional stages of inverted residuals (``block_type``),
inverted-residual downsampling (``downsample_type``), a stage-level fusion with the stage's input
(``stage_fusion``), a conv-BN-act stem and a 1x1 conv before the head; AFFNet is built from these (see
``models/blocks.py`` and ``models/affnet_family.py``). ConvNeXt(-V2)-style channel mixers (``mlp_type``),
cross-stage shortcuts (``cross_stage_shortcuts``) and a constant drop path build Strip-MLP
(``models/stripmlp_family.py``). Inside a stage the tensors are
channels-last ``(B, H, W, C)``; between stages, and in every output of the model, they are NCHW views of that
memory (so ``features_only`` maps and ``forward_features`` are NCHW, in channels_last memory format).

The defaults are the layout of PoolFormerV2-S12 (MetaFormer baselines "v2"): channel-LN post-norm in the stem
and pre-norm in the downsampling layers (no bias, eps 1e-6), GroupNorm(1) block norms without bias, a StarReLU
MLP without biases, ResScale in stages 3-4, global average pooling, LayerNorm (with bias) and a linear head.
PoolFormer v1, ConvFormer, CAFormer and the other families are configurations of the same class.
"""

# No ``from __future__ import annotations`` in this file: FX copies the model's forward annotations into the code
# it generates, and string annotations there break scripting the graph (timm's test_model_forward_fx_torchscript).
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq
from timm.models._features import FeatureGetterNet, feature_take_indices

from ..mixers import create_act, create_mixer
from .blocks import (
    ConvNormAct,
    CrossStageShortcuts,
    Downsample,
    InvertedResidual,
    InvertedResidualDownsample,
    StageFusion,
    Stem,
    WeightedAverage,
    weighted_average,
)
from .checkpoint import checkpoint_filter_fn
from .layers import ConvNeXtMlp, Mlp, MlpHead, Scale, create_norm

__all__ = ["ClassifierHead", "MetaFormer", "MetaFormerBlock", "MetaFormerStage", "create_metaformer"]

POOL_TYPES = ("avg", "max", "")
BLOCK_TYPES = ("metaformer", "inverted_residual")
DOWNSAMPLE_TYPES = ("conv", "inverted_residual")
MLP_TYPES = ("mlp", "inverted_residual", "convnext", "convnext_grn", "none")
DROP_PATH_SCHEDULES = ("linear", "constant")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}; use one of {', '.join(choices)}.")
    return value


def _to_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"Expected an int or an (H, W) pair, got {value!r}.")
    return value  # type: ignore[return-value]


def _per_stage(name: str, value: Any, num_stages: int) -> list[Any]:
    """A scalar (or a single mixer spec) broadcast to every stage, or a list with one entry per stage."""
    if isinstance(value, (str, Mapping)) or value is None or not isinstance(value, Sequence):
        return [value] * num_stages
    value = list(value)
    if len(value) != num_stages:
        raise ValueError(f"{name}: expected one value or {num_stages} (one per stage), got {len(value)}: {value!r}.")
    return value


def init_weights(module: nn.Module) -> None:
    """The MetaFormer init: trunc-normal(std 0.02) weights and zero biases for every conv and linear layer."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _channel_mlp(
    mlp_type: str, dim: int, ratio: float, act: str, bias: bool, conv_bias: bool, norm_eps: float, drop: float
) -> nn.Module:
    """The channel MLP of a block: ``mlp`` (fc-act-fc), ``inverted_residual`` (MBConv with its own skip), or
    ``convnext`` / ``convnext_grn`` (dw 7x7 -> LayerNorm -> MLP [-> GRN], ConvNeXt(-V2))."""
    hidden = int(ratio * dim)
    if mlp_type == "inverted_residual":
        return InvertedResidual(dim, dim, 1, ratio, act)
    if mlp_type in ("convnext", "convnext_grn"):
        grn = mlp_type == "convnext_grn"
        return ConvNeXtMlp(dim, hidden, act=act, bias=bias, conv_bias=conv_bias, grn=grn, norm_eps=norm_eps, drop=drop)
    return Mlp(dim, hidden, act=act, bias=bias, drop=drop)


class MetaFormerBlock(nn.Module):
    """Pre-norm token mixer + channel MLP, each with drop path, optional LayerScale and ResScale.

    ``mlp=None`` (with ``norm2=None``) makes a mixer-only block, ``x = x + drop_path(mixer(norm1(x)))``.
    ``sublayers()`` lists the residual sub-layers in the order they run (for stage-level weighted averaging).

    ``norm1`` always belongs to the token mixer and ``norm2`` to the MLP. ``mlp_first`` runs the MLP sub-layer
    first. ``single_residual`` puts one residual (with ``drop_path1``/``layer_scale1``/``res_scale1``) around
    both sub-layers instead of one each; with ``mlp_first`` this is AFFNet's block:
    ``x = x + drop_path(mixer(norm1(mlp(norm2(x)))))``.
    """

    __constants__ = ("mlp_first", "single_residual")  # TorchScript compiles only the layout a block has

    def __init__(
        self,
        dim: int,
        token_mixer: nn.Module,
        norm1: nn.Module,
        norm2: nn.Module | None,
        mlp: nn.Module | None,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        res_scale_init: float | None = None,
        mlp_first: bool = False,
        single_residual: bool = False,
    ) -> None:
        super().__init__()
        self.mlp_first = mlp_first
        self.single_residual = single_residual
        self.norm1 = norm1
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = Scale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.res_scale1 = Scale(dim, res_scale_init) if res_scale_init is not None else nn.Identity()
        self.norm2 = norm2
        self.mlp = mlp
        if not single_residual and mlp is not None:
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
            self.layer_scale2 = Scale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
            self.res_scale2 = Scale(dim, res_scale_init) if res_scale_init is not None else nn.Identity()

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        return self.token_mixer(self.norm1(x))

    def _channel_mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp is None:
            return x
        return self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        if self.single_residual:
            y = self._mix(self._channel_mlp(x)) if self.mlp_first else self._channel_mlp(self._mix(x))
            return self.res_scale1(x) + self.layer_scale1(self.drop_path1(y))
        if self.mlp is None:
            return self.token_sublayer(x)
        if self.mlp_first:
            return self.token_sublayer(self.channel_sublayer(x))
        return self.channel_sublayer(self.token_sublayer(x))

    def forward_averaged(self, outputs: list[torch.Tensor], weights: torch.Tensor) -> list[torch.Tensor]:
        """The block inside a weighted-averaging stage: each of its residual sub-layers reads the weighted average
        (``WeightedAverage.weights``, see ``weighted_average``) of all earlier sub-layer outputs of the stage
        (``outputs``, the stage input first). Returns the block's new outputs (one per sub-layer)."""
        new: list[torch.Tensor] = []
        if self.mlp is None:
            new.append(self.token_sublayer(weighted_average(weights, outputs)))
        elif self.mlp_first:
            new.append(self.channel_sublayer(weighted_average(weights, outputs)))
            new.append(self.token_sublayer(weighted_average(weights, outputs + new)))
        else:
            new.append(self.token_sublayer(weighted_average(weights, outputs)))
            new.append(self.channel_sublayer(weighted_average(weights, outputs + new)))
        return new

    def token_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale1(x) + self.layer_scale1(self.drop_path1(self._mix(x)))

    def channel_sublayer(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self._channel_mlp(x)))

    def num_sublayers(self) -> int:
        """The number of residual sub-layers (not defined for ``single_residual`` blocks)."""
        if self.single_residual:
            raise ValueError("A single_residual block has no separate residual sub-layers.")
        return 1 if self.mlp is None else 2

    def sublayers(self) -> list[Any]:
        """The residual sub-layers in the order they run (not defined for ``single_residual`` blocks)."""
        if self.num_sublayers() == 1:
            return [self.token_sublayer]
        if self.mlp_first:
            return [self.channel_sublayer, self.token_sublayer]
        return [self.token_sublayer, self.channel_sublayer]


class MetaFormerStage(nn.Module):
    """Downsampling (or identity), a sequence of blocks and an optional fusion of the blocks' output with the
    downsampled input (``fusion(x, shortcut)``); NCHW in and out. With ``averaging`` (a ``WeightedAverage``) every
    sub-layer reads a learnable weighted average of all earlier sub-layer outputs of the stage. Gradient
    checkpointing (``grad_checkpointing``) recomputes each block in the backward pass, with or without averaging
    (with averaging, every sub-layer output of the stage is kept: later sub-layers read them)."""

    def __init__(
        self,
        downsample: nn.Module,
        blocks: Sequence[nn.Module],
        fusion: nn.Module | None = None,
        averaging: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)
        self.fusion = fusion
        self.averaging = averaging  # None is a plain attribute: models without averaging keep their keys
        self.grad_checkpointing = False

    def forward(
        self, x: torch.Tensor, shortcut: torch.Tensor | None = None, skip_downsample: bool = False
    ) -> torch.Tensor:
        """``shortcut`` (cross-stage shortcuts) is added to the downsampled input; ``skip_downsample``: ``x`` is
        already the downsampled input (the shortcuts read it). Called as a module either way, so FX graphs and
        hooks see every stage's output under the stage's name."""
        if not skip_downsample:
            x = self.downsample(x)
        if shortcut is not None:
            x = x + shortcut
        return self.forward_blocks(x)

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage after its downsampling (NCHW in and out)."""
        x = shortcut = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.averaging is not None:
            x = self._averaged(x, len(self.blocks))[-1]
        elif self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        if self.fusion is not None:
            x = self.fusion(x, shortcut)
        return x.permute(0, 3, 1, 2)  # NCHW view

    def _averaged(self, x: torch.Tensor, num_blocks: int) -> list[torch.Tensor]:
        """The outputs (channels-last) of the first ``num_blocks`` blocks of a weighted-averaging stage."""
        averaging = self.averaging
        assert averaging is not None
        weights = averaging.weights
        outputs, block_outputs = [x], []
        for j, block in enumerate(self.blocks):
            if j < num_blocks:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    outputs = outputs + list(checkpoint(_averaged_block, block, weights, *outputs))
                else:
                    outputs = outputs + block.forward_averaged(outputs, weights)
                block_outputs.append(outputs[-1])
        return block_outputs

    @torch.jit.ignore
    def forward_block_outputs(self, x: torch.Tensor, num_blocks: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-block taps (for single-stage models): NCHW in (after the downsampling); returns the outputs of the
        first ``num_blocks`` blocks (NCHW views) and the stage output (the last of them, through the fusion when
        every block ran)."""
        x = shortcut = x.permute(0, 2, 3, 1)
        if self.averaging is not None:
            outputs = self._averaged(x, num_blocks)
        else:
            outputs = []
            for block in self.blocks[:num_blocks]:
                x = checkpoint(block, x) if self.grad_checkpointing else block(x)
                outputs.append(x)
        final = outputs[-1]
        if self.fusion is not None and num_blocks == len(self.blocks):
            final = self.fusion(final, shortcut)
        return [y.permute(0, 3, 1, 2) for y in outputs], final.permute(0, 3, 1, 2)


def _averaged_block(block: MetaFormerBlock, weights: torch.Tensor, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A block of a weighted-averaging stage as a function of the earlier outputs (for ``checkpoint``)."""
    return tuple(block.forward_averaged(list(outputs), weights))


class ClassifierHead(nn.Module):
    """Global pool and final norm (in either order), dropout, then a linear or MLP classifier.

    ``norm_before_pool=False`` (MetaFormer v2, timm): pool -> norm. ``True`` (official PoolFormer v1): the norm
    (GroupNorm(1) there) normalises the whole map, then pool. With ``pool_type=''`` the map is kept (NCHW out).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        pool_type: str = "avg",
        norm: str | None = "layernorm",
        norm_eps: float = 1e-6,
        norm_before_pool: bool = False,
        head: str = "linear",
        hidden_ratio: float = 4.0,
        mlp_norm_eps: float = 1e-5,
        head_dropout: float = 0.0,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"Unknown head {head!r}; use 'linear' or 'mlp'.")
        self.dim = dim
        self.head_type = head
        self.hidden_ratio = hidden_ratio
        self.mlp_norm_eps = mlp_norm_eps
        self.head_dropout = head_dropout
        self.norm_before_pool = norm_before_pool
        self.pool_type = self._check_pool(pool_type)
        self.norm = create_norm(norm, dim, eps=norm_eps, bias=True)
        self.drop = nn.Dropout(drop_rate)
        self.fc = self._make_fc(num_classes)

    @staticmethod
    def _check_pool(pool_type: str) -> str:
        if pool_type not in POOL_TYPES:
            raise ValueError(f"Unknown global_pool {pool_type!r}; use one of {POOL_TYPES} ('' keeps the map).")
        return pool_type

    def _make_fc(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.head_type == "linear":
            return nn.Linear(self.dim, num_classes)
        return MlpHead(self.dim, num_classes, self.hidden_ratio, norm_eps=self.mlp_norm_eps, drop=self.head_dropout)

    def reset(self, num_classes: int, pool_type: str | None = None) -> None:
        if pool_type is not None:
            self.pool_type = self._check_pool(pool_type)
        device = next((p.device for p in self.parameters()), None)
        self.fc = self._make_fc(num_classes).to(device)
        self.fc.apply(init_weights)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if self.norm_before_pool:
            x = self.norm(x)
        if self.pool_type == "avg":
            x = x.mean(dim=(1, 2))  # (B, C)
        elif self.pool_type == "max":
            x = x.amax(dim=(1, 2))
        if not self.norm_before_pool:
            x = self.norm(x)
        x = self.drop(x)
        if not pre_logits:
            x = self.fc(x)
        return x if self.pool_type else x.permute(0, 3, 1, 2)


class MetaFormer(nn.Module):
    """Hierarchical MetaFormer backbone; every per-stage option takes one value or a list with one per stage.

    Per-stage: ``mixer`` (a mixer spec, see ``mixers.create_mixer``), ``norm``, ``mlp_ratio``,
    ``layer_scale_init``, ``res_scale_init`` (None = no scale), ``block_type``, ``mlp_type``, ``stage_fusion``.
    ``norm_eps``/``norm_bias`` apply to the stem, downsampling and block norms; the final norm always has a bias
    and uses ``head_norm_eps`` (default ``norm_eps``). ``img_size`` only matters to mixers whose weights depend on
    the grid (they get the stage grid it gives). ``drop_rate`` is dropout on the pooled features, ``head_dropout``
    the official MLP head's dropout before its last layer.

    Other layouts (MobileNetV2/MobileViT/AFFNet-style; convs are conv-BatchNorm-``conv_act``):
    - ``stem_dim``: stem width if not ``dims[0]`` (stage 0 then starts with a stride-1 projection);
      ``stem_bias``, ``stem_act``: the stem conv's bias and an activation after its norm.
    - ``block_type``: ``metaformer`` (default) or ``inverted_residual``: a conv stage of ``depth`` inverted
      residuals (expansion ``ir_expansion``), the first one doing the stage's stride and width change.
    - ``downsample_type``: ``conv`` (norm + strided conv, default) or ``inverted_residual`` (stride-2 inverted
      residual, expansion ``ir_expansion``) in front of MetaFormer stages.
    - ``mlp_type``: ``mlp`` (default) or ``inverted_residual``: the channel mixer is an inverted residual with its
      own skip (expansion ``mlp_ratio``, activation ``mlp_act``); ``convnext`` / ``convnext_grn``: the branch of a
      ConvNeXt (V2, with GRN) block, dw 7x7 conv (bias ``mlp_conv_bias``) -> LayerNorm (eps ``norm_eps``) -> MLP
      (``mlp_ratio``, ``mlp_act``, ``mlp_bias``), meant for ``norm=None`` blocks (``models.layers.ConvNeXtMlp``).
      ``none`` (or ``mlp_ratio`` 0): mixer-only blocks, no ``norm2``/``mlp`` (Hydra-ViT).
    - ``downsample_bias``: the downsampling convs' bias.
    - ``drop_path_schedule``: ``linear`` (default; 0 -> ``drop_path_rate`` over the blocks) or ``constant``
      (``drop_path_rate`` in every block, as Strip-MLP).
    - ``cross_stage_shortcuts``: source stages whose input (after downsampling) is carried to every later stage's
      input by grouped strided convs and added there (``models.blocks.CrossStageShortcuts``; Strip-MLP: (1, 2)).
      ``features_only`` models then need timm's ``feature_cls="getter"`` (it calls ``forward_intermediates``).
    - ``mlp_first``, ``single_residual``: block order and residual layout (see ``MetaFormerBlock``).
    - ``stage_fusion``: end the stage with ``StageFusion`` (norm, 1x1 projection, concat with the stage input
      after downsampling, 1x1 fusion conv).
    - ``final_conv_dim``: a 1x1 conv-BN-act to this width after the last stage (part of ``forward_features``).
    - ``channel_mixer``: per stage, a registered mixer spec (``mixers.create_mixer``, with the same context as the
      token mixer) built in the MLP slot instead of the MLP (e.g. ``mamba_channel_mixer``); None keeps ``mlp_type``.
    - ``mlp_every``: per stage, only every n-th block has the channel sub-layer (block j when ``(j + 1) % n == 0``;
      the others are mixer-only): ViM2's two token mixers per channel mixer is ``mlp_every=2``.
    - ``weighted_average``: per stage, each sub-layer's input is a learnable scalar combination of the stage input
      and all earlier sub-layer outputs of the stage (``models.blocks.WeightedAverage``, MambaMixer's weighted
      averaging), initialised to the plain residual network.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        mixer: Any = "pooling",
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        img_size: int | Sequence[int] = 224,
        stem_kernel_size: int = 7,
        stem_stride: int = 4,
        stem_padding: int = 2,
        stem_norm: str | None = "layernorm",
        downsample_kernel_size: int = 3,
        downsample_stride: int = 2,
        downsample_padding: int = 1,
        downsample_norm: str | None = "layernorm",
        norm: Any = "groupnorm1",
        norm_eps: float = 1e-6,
        norm_bias: bool = False,
        mlp_ratio: Any = 4.0,
        mlp_act: str = "starrelu",
        mlp_bias: bool = False,
        layer_scale_init: Any = None,
        res_scale_init: Any = (None, None, 1.0, 1.0),
        drop_path_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        head: str = "linear",
        head_norm: str | None = "layernorm",
        head_norm_before_pool: bool = False,
        head_norm_eps: float | None = None,
        head_hidden_ratio: float = 4.0,
        head_mlp_norm_eps: float = 1e-5,
        head_dropout: float = 0.0,
        stem_dim: int | None = None,
        stem_bias: bool = True,
        stem_act: str | None = None,
        block_type: Any = "metaformer",
        downsample_type: str = "conv",
        ir_expansion: float = 4.0,
        conv_act: str = "silu",
        mlp_type: Any = "mlp",
        mlp_first: bool = False,
        single_residual: bool = False,
        stage_fusion: Any = False,
        final_conv_dim: int | None = None,
        downsample_bias: bool = True,
        mlp_conv_bias: bool = True,
        drop_path_schedule: str = "linear",
        cross_stage_shortcuts: Sequence[int] = (),
        channel_mixer: Any = None,
        mlp_every: Any = 1,
        weighted_average: Any = False,
    ) -> None:
        super().__init__()
        depths, dims = [int(d) for d in depths], [int(d) for d in dims]
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(f"depths and dims need one entry per stage; got {len(depths)} and {len(dims)}.")
        mixers = _per_stage("mixer", mixer, num_stages)
        norms = _per_stage("norm", norm, num_stages)
        mlp_ratios = _per_stage("mlp_ratio", mlp_ratio, num_stages)
        layer_scales = _per_stage("layer_scale_init", layer_scale_init, num_stages)
        res_scales = _per_stage("res_scale_init", res_scale_init, num_stages)
        block_types = [
            _check_choice("block_type", b, BLOCK_TYPES) for b in _per_stage("block_type", block_type, num_stages)
        ]
        mlp_types = [_check_choice("mlp_type", m, MLP_TYPES) for m in _per_stage("mlp_type", mlp_type, num_stages)]
        fusions = _per_stage("stage_fusion", stage_fusion, num_stages)
        channel_mixers = _per_stage("channel_mixer", channel_mixer, num_stages)
        mlp_everys = [int(n) for n in _per_stage("mlp_every", mlp_every, num_stages)]
        averages = _per_stage("weighted_average", weighted_average, num_stages)
        _check_choice("downsample_type", downsample_type, DOWNSAMPLE_TYPES)
        _check_choice("drop_path_schedule", drop_path_schedule, DROP_PATH_SCHEDULES)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = final_conv_dim or dims[-1]
        self.img_size = _to_pair(img_size)
        stem_dim = stem_dim or dims[0]

        self.stem = Stem(
            in_chans,
            stem_dim,
            stem_kernel_size,
            stem_stride,
            stem_padding,
            create_norm(stem_norm, stem_dim, eps=norm_eps, bias=norm_bias),
            bias=stem_bias,
            act=create_act(stem_act) if stem_act is not None else None,
        )
        grid = tuple(_conv_out(s, stem_kernel_size, stem_stride, stem_padding) for s in self.img_size)
        reduction = stem_stride
        num_blocks = sum(depths)  # drop path grows linearly with the global block index, 0 -> drop_path_rate
        drop_path_rates = [drop_path_rate * j / max(num_blocks - 1, 1) for j in range(num_blocks)]
        if drop_path_schedule == "constant":
            drop_path_rates = [drop_path_rate] * num_blocks
        stages, self.feature_info = [], []
        for i in range(num_stages):
            in_dim, stride = (stem_dim, 1) if i == 0 else (dims[i - 1], downsample_stride)
            rates = drop_path_rates[sum(depths[:i]) : sum(depths[: i + 1])]
            downsample, blocks, fusion = nn.Identity(), [], None
            if block_types[i] == "inverted_residual":  # a conv stage: the first block strides and changes width
                if depths[i] < 1:
                    raise ValueError(f"Stage {i}: an inverted_residual stage needs a depth of at least 1.")
                for j in range(depths[i]):
                    block_in, block_stride = (in_dim, stride) if j == 0 else (dims[i], 1)
                    blocks.append(InvertedResidual(block_in, dims[i], block_stride, ir_expansion, conv_act, rates[j]))
                grid = tuple(_conv_out(s, 3, stride, 1) for s in grid)
            else:
                if stride > 1 or in_dim != dims[i]:  # stage 0 only when the stem width differs: stride 1
                    if downsample_type == "inverted_residual":
                        downsample = InvertedResidualDownsample(in_dim, dims[i], stride, ir_expansion, conv_act)
                        kernel, padding = 3, 1
                    else:
                        kernel, padding = downsample_kernel_size, downsample_padding
                        norm_layer = create_norm(downsample_norm, in_dim, eps=norm_eps, bias=norm_bias)
                        downsample = Downsample(in_dim, dims[i], kernel, stride, padding, norm_layer, downsample_bias)
                    grid = tuple(_conv_out(s, kernel, stride, padding) for s in grid)
                for j in range(depths[i]):
                    norm2 = create_norm(norms[i], dims[i], eps=norm_eps, bias=norm_bias)
                    if mlp_types[i] == "none" or not mlp_ratios[i] or (j + 1) % mlp_everys[i]:  # mixer-only block
                        mlp = norm2 = None
                    elif channel_mixers[i] is not None:  # a registered mixer in the MLP slot
                        mlp = create_mixer(channel_mixers[i], dims[i], grid=grid, img_size=self.img_size)
                    else:
                        mlp = _channel_mlp(
                            mlp_types[i],
                            dims[i],
                            mlp_ratios[i],
                            mlp_act,
                            mlp_bias,
                            mlp_conv_bias,
                            norm_eps,
                            proj_drop_rate,
                        )
                    blocks.append(
                        MetaFormerBlock(
                            dims[i],
                            token_mixer=create_mixer(mixers[i], dims[i], grid=grid, img_size=self.img_size),
                            norm1=create_norm(norms[i], dims[i], eps=norm_eps, bias=norm_bias),
                            norm2=norm2,
                            mlp=mlp,
                            drop_path=rates[j],
                            layer_scale_init=layer_scales[i],
                            res_scale_init=res_scales[i],
                            mlp_first=mlp_first,
                            single_residual=single_residual,
                        )
                    )
            if fusions[i]:
                fusion = StageFusion(dims[i], create_norm(norms[i], dims[i], eps=norm_eps, bias=norm_bias), conv_act)
            averaging = None
            if averages[i] and blocks:
                averaging = WeightedAverage(sum(block.num_sublayers() for block in blocks))
            reduction *= stride
            stages.append(MetaFormerStage(downsample, blocks, fusion, averaging))
            if _taps_blocks(depths):  # isotropic: one feature level per block, as timm's ViT / MLP-Mixer
                taps = [
                    dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}.blocks.{j}")
                    for j in range(depths[i])
                ]
                self.feature_info.extend(taps)
            else:
                self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.taps_blocks = _taps_blocks(depths)
        self.cross_shortcuts = None
        if cross_stage_shortcuts:
            self.cross_shortcuts = CrossStageShortcuts(
                cross_stage_shortcuts, dims, downsample_kernel_size, downsample_stride, downsample_padding
            )
        self.final_conv = ConvNormAct(dims[-1], final_conv_dim, act=conv_act) if final_conv_dim else nn.Identity()
        self.head = ClassifierHead(
            self.num_features,
            num_classes,
            pool_type=global_pool,
            norm=head_norm,
            norm_eps=norm_eps if head_norm_eps is None else head_norm_eps,
            norm_before_pool=head_norm_before_pool,
            head=head,
            hidden_ratio=head_hidden_ratio,
            mlp_norm_eps=head_mlp_norm_eps,
            head_dropout=head_dropout,
            drop_rate=drop_rate,
        )
        self.apply(init_weights)
        for module in self.modules():  # mixers with an init of their own get the last word
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    # --- timm model contract -------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of parameters to exclude from weight decay, collected from submodules that declare them."""
        names = set()
        for prefix, module in self.named_modules():
            if module is not self and hasattr(module, "no_weight_decay"):
                names.update(f"{prefix}.{n}" for n in module.no_weight_decay())
        return names

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.fusion", (99999,)),
                (r"^stages\.(\d+)\.averaging", (99999,)),
                (r"^cross_shortcuts\.", (99999,)),
                (r"^final_conv", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False):
        self.num_classes = num_classes
        if reset_other:
            self.head.norm = nn.Identity()
        self.head.reset(num_classes, global_pool)

    def _stage_outputs(self, x: torch.Tensor, num_stages: int) -> list[torch.Tensor]:
        """The outputs (NCHW) of the first ``num_stages`` stages from the stem output, adding the cross-stage
        shortcuts to the stage inputs."""
        outputs: list[torch.Tensor] = []
        arriving: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.stages):
            if i < num_stages:
                x = stage.downsample(x)
                if self.cross_shortcuts is not None:
                    for target, y in self.cross_shortcuts.carry(i, x, num_stages).items():
                        arriving[target] = arriving[target] + y if target in arriving else y
                x = stage(x, arriving.get(i), True)
                outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.stages(x) if self.cross_shortcuts is None else self._stage_outputs(x, len(self.stages))[-1]
        return self.final_conv(x)  # (B, C_last or final_conv_dim, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature levels of ``feature_info`` at ``indices`` (None: all, int n: last n, list: those): stage
        outputs, or block outputs in a single-stage (isotropic) model, as in timm's ViT. ``output_fmt``: ``NCHW``,
        ``NHWC`` or ``NLC`` (tokens row-major). ``norm`` has no effect (the taps carry no norm of their own, as in
        timm's MetaFormer). The final output (NCHW, not the intermediates) goes through ``final_conv`` when every
        level ran, as in ``forward_features``."""
        if output_fmt not in ("NCHW", "NHWC", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}.")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        num_levels = max_index + 1 if stop_early else len(self.feature_info)
        x = self.stem(x)
        if self.taps_blocks:
            stage = self.stages[0]
            outputs, x = stage.forward_block_outputs(stage.downsample(x), num_levels)
        else:
            outputs = self._stage_outputs(x, num_levels)
            x = outputs[-1]
        intermediates = [outputs[i] for i in take_indices]
        if output_fmt != "NCHW":
            intermediates = [y.permute(0, 2, 3, 1) for y in intermediates]
            if output_fmt == "NLC":
                intermediates = [y.flatten(1, 2) for y in intermediates]
        if intermediates_only:
            return intermediates
        if num_levels == len(self.feature_info):
            x = self.final_conv(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (blocks, in a single-stage model) after the last of ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        if max_index < len(self.feature_info) - 1:
            if self.taps_blocks:
                stage = self.stages[0]
                stage.blocks = stage.blocks[: max_index + 1]
                stage.fusion = None
            else:
                self.stages = self.stages[: max_index + 1]
                if self.cross_shortcuts is not None and not self.cross_shortcuts.prune(max_index + 1):
                    self.cross_shortcuts = None  # no link left into a kept stage
            self.feature_info = self.feature_info[: max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.final_conv = nn.Identity()
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "", reset_other=True)
        return take_indices


def _taps_blocks(depths: Sequence[int]) -> bool:
    """Whether a model's feature levels are its blocks (single-stage, isotropic models) rather than its stages."""
    return len(depths) == 1


def create_metaformer(
    variant: str,
    pretrained: bool,
    default_out_indices: Sequence[int],
    *,
    default_feature_cls: str | None = None,
    **kwargs: Any,
) -> MetaFormer:
    """Build a registered family member with timm's ``build_model_with_cfg``: its pretrained cfg, loading with
    ``checkpoint_filter_fn`` (official key layouts too), and ``features_only`` support with any ``feature_cls``
    (a caller's ``feature_cls`` overrides the family's ``default_feature_cls``; ``"getter"`` takes features from
    ``forward_intermediates``, for layouts with connections outside the stages). A single-stage model's feature
    levels are its blocks, which run channels-last: extractors that tap modules (``"fx"``, ``"hook"``) return
    them as NHWC maps and say so in their ``output_fmt``; ``"getter"`` returns NCHW. With cross-stage shortcuts,
    ``"list"``/``"dict"`` (which re-run the top-level modules in order) raise; ``"hook"`` hooks the unchanged
    model."""
    feature_cfg: dict[str, Any] = dict(out_indices=kwargs.pop("out_indices", default_out_indices))
    feature_cfg["flatten_sequential"] = True  # dropped by timm for the extractors that do not take it
    if default_feature_cls is not None:
        feature_cfg["feature_cls"] = default_feature_cls
    feature_cls = kwargs.get("feature_cls", default_feature_cls)
    if kwargs.get("cross_stage_shortcuts"):  # connections outside the stages: the model's own forward must run
        if feature_cls in (None, "list", "dict"):
            raise ValueError(
                f"{variant}: feature_cls={feature_cls!r} re-runs the top-level modules in order, which skips the "
                "cross-stage shortcuts; use 'getter', 'fx' or 'hook'."
            )
        feature_cfg["flatten_sequential"] = False  # 'hook': hooks on the unchanged model
    uses_getter = feature_cls == "getter" or (
        isinstance(feature_cls, type) and issubclass(feature_cls, FeatureGetterNet)
    )
    if _taps_blocks(kwargs.get("depths", ())) and not uses_getter:
        feature_cfg["output_fmt"] = "NHWC"
    return build_model_with_cfg(
        MetaFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs
    )
