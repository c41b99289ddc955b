"""The shared MetaFormer backbone builder.

    stem -> [stage_i = downsample_i -> depth_i x block_i(mixer_i) -> stage extras]_i -> model extras -> head

Every slot is a *spec* (a registered name, or a mapping with ``name`` plus options) resolved through a registry:
token mixers (``mixerzoo.mixers``), and the stem, downsampling, block, extra and head registries of
``models/registry.py``. The builder never asks what a spec is: a new family is one family file holding specs and
``@register_model`` functions (plus a block class only if its block is new, registered with ``@BLOCKS.register``).
Inside a stage the tensors are channels-last ``(B, H, W, C)``; between stages, and in every output of the model,
they are NCHW views of that memory (so ``features_only`` maps and ``forward_features`` are NCHW, in
channels_last memory format).

The defaults are PoolFormerV2-S12 (MetaFormer baselines "v2"): channel-LN post-norm in the stem and pre-norm in
the downsampling layers (no bias, eps 1e-6), GroupNorm(1) block norms without bias, a StarReLU MLP without
biases, global average pooling, LayerNorm (with bias) and a linear head (ResScale in stages 3-4 is the model
configs' ``block.res_scale_init``). Every other model is a configuration of the same class.
"""

# No ``from __future__ import annotations`` in this file: FX copies the model's forward annotations into the code
# it generates, and string annotations there break scripting the graph (timm's test_model_forward_fx_torchscript).
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, checkpoint, checkpoint_seq
from timm.models._features import FeatureGetterNet, feature_take_indices

from ..registry import Spec, plain, split_spec
from . import blocks as _blocks  # noqa: F401  (registers the stems, downsampling layers and blocks)
from . import extras as _extras  # noqa: F401  (registers the extras)
from .checkpoint import check_pretrained_file, checkpoint_filter_fn
from .layers import init_weights
from .registry import BLOCKS, DOWNSAMPLES, EXTRAS, HEADS, STEMS

__all__ = ["MetaFormer", "MetaFormerStage", "create_metaformer", "pretrained_cfg"]

DROP_PATH_SCHEDULES = ("linear", "constant")


def _to_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"Expected an int or an (H, W) pair, got {value!r}.")
    return value  # type: ignore[return-value]


def per_stage(name: str, value: Any, num_stages: int) -> list[Any]:
    """One value (a name, a mapping spec, a number or None) for every stage, or a list with one per stage."""
    value = plain(value)
    if not isinstance(value, list):
        return [value] * num_stages
    if len(value) != num_stages:
        raise ValueError(f"{name}: expected one value or {num_stages} (one per stage), got {len(value)}: {value!r}.")
    return value


def block_specs(block: Any, num_stages: int) -> list[Spec]:
    """Per-stage block specs from ``block``: one spec or one per stage; inside a mapping spec an option given as a
    list holds one value per stage (block options are never lists), e.g. ``res_scale_init: [null, null, 1, 1]``."""
    specs = []
    for i, spec in enumerate(per_stage("block", block, num_stages)):
        name, options = split_spec(spec, "block")
        for key, value in options.items():
            if isinstance(value, list):
                options[key] = per_stage(f"block.{key}", value, num_stages)[i]
        specs.append({"name": name, **options})
    return specs


def _resampled(module: nn.Module, grid: tuple[int, int], reduction: int) -> tuple[tuple[int, int], int]:
    """Grid and total stride after ``module`` (modules that change the grid have ``out_grid`` and ``stride``)."""
    if hasattr(module, "out_grid"):
        return module.out_grid(grid), reduction * module.stride
    return grid, reduction


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
        """The stage after its downsampling (NCHW in and out). The blocks run on channels-last memory: input in NCHW
        memory (a plain conv's output) is copied once here, else each block's norm would copy it and each residual
        add would mix the two layouts (and pass the NCHW memory on)."""
        x = shortcut = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
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
        x = shortcut = x.permute(0, 2, 3, 1).contiguous()
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


def _averaged_block(block: nn.Module, weights: torch.Tensor, *outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A block of a weighted-averaging stage as a function of the earlier outputs (for ``checkpoint``)."""
    return tuple(block.forward_averaged(list(outputs), weights))


class MetaFormer(nn.Module):
    """Hierarchical (or isotropic) MetaFormer backbone built from specs.

    Args:
        depths, dims: blocks and width per stage.
        mixer: token-mixer spec (``mixerzoo.mixers.create_mixer``), one or one per stage.
        block: block spec (registry ``BLOCKS``: ``metaformer``, ``aff``, ``inverted_residual``), one or one per
            stage; options of a mapping may hold one value per stage (see ``block_specs``). The ``metaformer``
            block's options: ``norm``, ``norm_eps``, ``norm_bias``, ``mlp`` (a channel-mixer spec or None),
            ``mlp_every``, ``layer_scale_init``, ``res_scale_init``.
        downsample: downsampling spec before stages 1.. (``conv``, ``inverted_residual``, None for none: the
            stage's first block then changes width and stride), one (stages 1..) or one per stage (stage 0's must
            be None: the stem is its downsampling).
        stem: stem spec (``conv``: ``dim`` (default ``dims[0]``), ``kernel_size``, ``stride``, ``padding``,
            ``norm``, ``norm_eps``, ``norm_bias``, ``bias``, ``act``).
        head: head spec (``linear`` or ``mlp``: ``norm``, ``norm_eps``, ``norm_before_pool``; ``mlp`` also
            ``hidden_ratio``, ``mlp_norm_eps``, ``dropout``).
        extras: list of extra specs (``fusion``, ``weighted_average`` with optional ``stages``;
            ``cross_stage_shortcuts``, ``final_conv``), see ``models/extras.py``.
        num_classes, in_chans: classifier outputs (0: none) and input channels.
        img_size: input size the grid-bound mixers are built for (they get their stage's grid).
        drop_path_rate, drop_path_schedule: stochastic depth, ``linear`` (0 -> rate over the blocks) or
            ``constant`` (the rate in every block, as Strip-MLP).
        global_pool: ``avg``, ``max`` or '' (keep the map).
        drop_rate: dropout on the pooled features.
        device, dtype: where and in which dtype every parameter and buffer is created (timm's factory arguments:
            ``device="meta"`` builds the structure without memory, ``dtype=torch.bfloat16`` builds in bf16). They
            travel with the builder's context to every stem, downsampling layer, block, mixer, extra and head.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (64, 128, 320, 512),
        mixer: Any = "pooling",
        block: Any = "metaformer",
        downsample: Any = "conv",
        stem: Spec = "conv",
        head: Spec = "linear",
        extras: Sequence[Spec] = (),
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 224,
        drop_path_rate: float = 0.0,
        drop_path_schedule: str = "linear",
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths, dims = [int(d) for d in depths], [int(d) for d in dims]
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise ValueError(f"depths and dims need one entry per stage; got {len(depths)} and {len(dims)}.")
        if drop_path_schedule not in DROP_PATH_SCHEDULES:
            raise ValueError(f"Unknown drop_path_schedule {drop_path_schedule!r}; use one of {DROP_PATH_SCHEDULES}.")
        mixers = per_stage("mixer", mixer, num_stages)
        blocks_ = block_specs(block, num_stages)
        downsamples = plain(downsample)
        if not isinstance(downsamples, list):
            downsamples = [None] + [downsamples] * (num_stages - 1)
        downsamples = per_stage("downsample", downsamples, num_stages)
        if downsamples[0] is not None:
            raise ValueError("downsample: stage 0 follows the stem, so its entry must be null (set the stem's stride).")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = _to_pair(img_size)

        stem_name, stem_options = split_spec(plain(stem), "stem")
        stem_options.setdefault("dim", dims[0])
        self.stem = STEMS.create(
            {"name": stem_name, **stem_options}, in_chans, context=dict(img_size=self.img_size, **dd)
        )
        grid, reduction = _resampled(self.stem, self.img_size, 1)
        num_blocks = sum(depths)  # drop path grows linearly with the global block index, 0 -> drop_path_rate
        rates = [drop_path_rate * j / max(num_blocks - 1, 1) for j in range(num_blocks)]
        if drop_path_schedule == "constant":
            rates = [drop_path_rate] * num_blocks
        in_dim = stem_options["dim"]
        stages, self.feature_info = [], []
        for i in range(num_stages):
            downsample_ = nn.Identity()
            if downsamples[i] is not None:
                downsample_ = DOWNSAMPLES.create(
                    downsamples[i], in_dim, dims[i], context=dict(img_size=self.img_size, **dd)
                )
                grid, reduction = _resampled(downsample_, grid, reduction)
                in_dim = dims[i]
            stage_blocks = []
            for j in range(depths[i]):
                context = dict(grid=grid, img_size=self.img_size, mixer=mixers[i], in_dim=in_dim, index=j, **dd)
                stage_blocks.append(BLOCKS.create(blocks_[i], dims[i], context=dict(drop_path=rates.pop(0), **context)))
                grid, reduction = _resampled(stage_blocks[-1], grid, reduction)
                in_dim = dims[i]
            stages.append(MetaFormerStage(downsample_, stage_blocks))
            taps = [f"stages.{i}"]
            if _taps_blocks(depths):  # isotropic: one feature level per block, as timm's ViT / MLP-Mixer
                taps = [f"stages.{i}.blocks.{j}" for j in range(depths[i])]
            self.feature_info += [dict(num_chs=dims[i], reduction=reduction, module=m) for m in taps]
        self.stages = nn.Sequential(*stages)
        self.taps_blocks = _taps_blocks(depths)
        self.cross_shortcuts = None
        self.final_conv = nn.Identity()
        for spec in extras:
            self._attach(spec, dims, dd)
        self.num_features = self.head_hidden_size = getattr(self.final_conv, "out_dim", dims[-1])
        context = dict(pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.head = HEADS.create(plain(head), self.num_features, num_classes, context=context)
        self.apply(init_weights)
        for module in self.modules():  # mixers with an init of their own get the last word
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()

    def _attach(self, spec: Spec, dims: list[int], dd: dict[str, Any]) -> None:
        """Build an extra (``dd``: its device and dtype) and put it where its class says (``attach``): on the model,
        or on its ``stages``."""
        name, options = split_spec(plain(spec), "extra")
        attach = EXTRAS.get(name).attach
        if attach in ("cross_shortcuts", "final_conv"):
            setattr(self, attach, EXTRAS.create({"name": name, **options}, context=dict(dims=dims, dim=dims[-1], **dd)))
            return
        for i in options.pop("stages", range(len(self.stages))):
            stage = self.stages[i]
            module = EXTRAS.create(
                {"name": name, **options}, context=dict(dim=dims[i], blocks=list(stage.blocks), **dd)
            )
            setattr(stage, attach, module)

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

    def reset_classifier(
        self,
        num_classes: int,
        global_pool: str | None = None,
        reset_other: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        """A new classifier for ``num_classes`` (0: none), on the model's device and in its dtype unless given."""
        dd = get_device_dtype(self, device=device, dtype=dtype)
        self.num_classes = num_classes
        if reset_other:
            self.head.norm = nn.Identity()
        self.head.reset(num_classes, global_pool, **dd)

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


def _attaches_to_model(spec: Spec, attach: str) -> bool:
    return EXTRAS.get(split_spec(plain(spec), "extra")[0]).attach == attach


def pretrained_cfg(paper_name: str, paper_ids: str, origin_url: str, license: str, **kwargs: Any) -> dict[str, Any]:
    """A family member's pretrained cfg: ImageNet-1K at 224, bicubic center crop 0.875, ImageNet mean/std, the
    builder's ``stem.conv`` / ``head.fc`` names and no weight URL, unless ``kwargs`` say otherwise."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": license,
        "paper_name": paper_name,
        "paper_ids": paper_ids,
        "origin_url": origin_url,
        **kwargs,
    }


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
    if any(
        _attaches_to_model(spec, "cross_shortcuts") for spec in kwargs.get("extras", ())
    ):  # connections outside the stages: the model's own forward must run
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
    if pretrained:
        check_pretrained_file(variant, **kwargs)
    return build_model_with_cfg(
        MetaFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=feature_cfg, **kwargs
    )
