"""Loading checkpoints into zoo models, whatever layout they were written in.

``load_checkpoint(model, source)`` accepts a path or a state dict in
- the zoo's own layout (also what ``train.py`` writes, under a ``model``/``state_dict`` entry),
- timm's layout (``timm.create_model(...).state_dict()``; its 1x1 convs become our Linear layers),
- an official repository's layout (auto-detected: see ``OFFICIAL_LAYOUTS``).

Files are read by ``read_checkpoint``: ``torch.load(weights_only=True)`` only, and a file that cannot be read
(empty, truncated, not a checkpoint, or a pickle of arbitrary Python objects) is a ``CheckpointError`` naming the
file and the problem; it never suggests an unsafe load. Loading is strict and a mismatch raises an error that
names the missing, unexpected and mis-shaped keys, except that ``reset_classifier=True`` (fine-tuning) keeps the
model's own freshly initialised classifier where the checkpoint's was made for another class count.
``checkpoint_filter_fn`` is the same conversion in the form timm's ``build_model_with_cfg(pretrained_filter_fn=...)``
calls it, and as strict: a file written for another model is an error naming the mismatch there too, never random
weights behind one warning. Only what timm itself adapts after the filter may differ: the classifier (another
``num_classes``) and the first conv (another ``in_chans``). ``check_pretrained_file`` reads the file that a
``pretrained_cfg``/``pretrained_cfg_overlay`` names with ``read_checkpoint`` before timm does, so an unreadable one
gets the same clear error.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "OFFICIAL_LAYOUTS",
    "CheckpointError",
    "check_pretrained_file",
    "checkpoint_filter_fn",
    "load_checkpoint",
    "read_checkpoint",
    "read_state_dict",
]

_logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


def _metaformer_v1_detect(sd: StateDict) -> bool:
    return any(k.startswith("network.") for k in sd)


def _metaformer_v1_convert(sd: StateDict) -> StateDict:
    """sail-sg/poolformer: ``patch_embed.proj``, ``network.{0,2,4,6}.<j>`` blocks, ``network.{1,3,5}.proj``
    downsampling, ``layer_scale_1/2`` vectors, final ``norm`` (GroupNorm(1) on the map) and ``head``."""
    out = {}
    for key, value in sd.items():
        key = key.replace("patch_embed.proj.", "stem.conv.")
        key = re.sub(r"^network\.(\d+)\.proj\.", lambda m: f"stages.{(int(m[1]) + 1) // 2}.downsample.conv.", key)
        key = re.sub(r"^network\.(\d+)\.(\d+)\.", lambda m: f"stages.{int(m[1]) // 2}.blocks.{m[2]}.", key)
        key = re.sub(r"\.layer_scale_(\d)$", r".layer_scale\1.scale", key)
        key = re.sub(r"^norm\.", "head.norm.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out


def _metaformer_v2_detect(sd: StateDict) -> bool:
    return any(k.startswith("downsample_layers.") for k in sd)


def _metaformer_v2_convert(sd: StateDict) -> StateDict:
    """sail-sg/metaformer: ``downsample_layers.0`` is the stem (``conv`` + ``post_norm``), ``downsample_layers.i``
    (``pre_norm`` + ``conv``) the downsampling of stage i, ``stages.i.j`` the blocks, final ``norm``, and ``head``
    (a Linear, or ``head.fc1/norm/fc2`` for the MLP head)."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^downsample_layers\.0\.conv\.", "stem.conv.", key)
        key = re.sub(r"^downsample_layers\.0\.post_norm\.", "stem.norm.", key)
        key = re.sub(r"^downsample_layers\.(\d+)\.pre_norm\.", r"stages.\1.downsample.norm.", key)
        key = re.sub(r"^downsample_layers\.(\d+)\.conv\.", r"stages.\1.downsample.conv.", key)
        key = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", key)
        key = re.sub(r"^head\.", "head.fc.", key)
        key = re.sub(r"^norm\.", "head.norm.", key)
        out[key] = value
    return out


def _affnet_detect(sd: StateDict) -> bool:
    return any(k.startswith("conv_1x1_exp.") for k in sd) and any(".global_rep." in k for k in sd)


_AFFNET_BLOCK_NAMES = {"norm1": "norm2", "norm2": "norm1", "filter": "token_mixer", "mlp": "mlp"}


def _affnet_convert(sd: StateDict) -> StateDict:
    """microsoft/TokenMixers AFFNet (ml-cvnets modules): ``conv_1`` stem, ``layer_1..5`` (MobileNetV2 layers, or an
    inverted residual ``.0`` then an ``AFFBlock`` ``.1`` with ``global_rep.<j>`` blocks, ``global_rep.<n>`` the
    final norm, ``conv_proj`` and ``fusion``), ``conv_1x1_exp`` and ``classifier.fc``. cvnets' ``ConvLayer`` wraps
    conv/norm in ``.block``; an inverted residual's layers are ``block.exp_1x1|conv_3x3|red_1x1``. The official
    block's ``norm1`` precedes its MLP and ``norm2`` the filter: the zoo's ``norm2`` and ``norm1``."""
    aff_layers = {m[1] for k in sd if (m := re.match(r"^layer_(\d+)\.1\.global_rep\.", k))}
    out = {}
    for key, value in sd.items():
        for official, zoo in (("exp_1x1", "conv_pw"), ("conv_3x3", "conv_dw"), ("red_1x1", "conv_pwl")):
            key = key.replace(f".block.{official}.block.", f".{zoo}.")
        key = re.sub(r"^conv_1\.block\.", "stem.", key)
        key = re.sub(r"^conv_1x1_exp\.block\.", "final_conv.", key)
        key = re.sub(r"^classifier\.fc\.", "head.fc.", key)
        if m := re.match(r"^layer_(\d+)\.", key):
            stage, rest = f"stages.{int(m[1]) - 1}", key[m.end() :]
            if m[1] not in aff_layers:  # a conv stage: layer_k.<j> are its blocks
                key = f"{stage}.blocks.{rest}"
            elif rest.startswith("0."):
                key = f"{stage}.downsample.{rest[2:]}"
            else:
                rest = re.sub(r"^1\.global_rep\.\d+\.(weight|bias)$", r"fusion.norm.\1", rest)
                rest = re.sub(
                    r"^1\.global_rep\.(\d+)\.(norm1|norm2|filter|mlp)\.",
                    lambda m: f"blocks.{m[1]}.{_AFFNET_BLOCK_NAMES[m[2]]}.",
                    rest,
                )
                rest = re.sub(r"^1\.conv_proj\.block\.", "fusion.proj.", rest)
                rest = re.sub(r"^1\.fusion\.block\.", "fusion.fuse.", rest)
                key = f"{stage}.{rest}"
        out[key] = value
    return out


def _stripmlp_detect(sd: StateDict) -> bool:
    return any(".token_mixing.smlp_block." in k for k in sd) and any(k.startswith("conv_s1_28.") for k in sd)


_STRIPMLP_MIXER_NAMES = {
    "dwsc.conv_merge.BN": "dwsc_norm",
    "dwsc.conv_merge.Conv": "dwsc_conv",
    "smlp_block.mlp.0": "proj",
    "smlp_block.mlp.1": "proj_norm",
    "smlp_block.proj_h": "cgsmm.proj_h",
    "smlp_block.proj_w": "cgsmm.proj_w",
    "smlp_block.fuse_h": "cgsmm.fuse_h",
    "smlp_block.fuse_w": "cgsmm.fuse_w",
    "smlp_block.BN": "cgsmm.norm",
    "smlp_block.relate_pos_h": "cgsmm.pos_h",
    "smlp_block.relate_pos_w": "cgsmm.pos_w",
    "smlp_block.fc_h": "lsmm.fc_h",
    "smlp_block.fc_w": "lsmm.fc_w",
    "smlp_block.reweight": "lsmm.reweight",
    "smlp_block.fuse": "fuse",
}
_STRIPMLP_CHANNEL_NAMES = {"conv_77": "conv", "layer_norm": "norm", "fc1": "fc1", "fc2": "fc2", "grn": "grn"}
_STRIPMLP_SHORTCUTS = {"conv_s1_28": "1.0", "conv_s1_14": "1.1", "conv_s2_14": "2.0"}


def _stripmlp_convert(sd: StateDict) -> StateDict:
    """Med-Process/Strip_MLP ``StripMLPNet``: ``patch_embed`` stem conv, ``blocks1..4.<j>`` with
    ``token_mixing.{dwsc.conv_merge.BN|Conv, smlp_block.*}`` and ``channel_mixing.{conv_77, layer_norm, fc1, fc2,
    grn}``, ``merging1..3`` downsampling convs, the cross-stage shortcuts ``conv_s1_28``, ``conv_s1_14``,
    ``conv_s2_14``, the final BatchNorm ``norm`` and the linear ``head``. Relative-position tables are
    ``relate_pos_*.embeddings_table``; GRN's (1, 1, 1, C) ``gamma``/``beta`` are reshaped by the loader."""
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^patch_embed\.", "stem.conv.", key)
        key = re.sub(r"^merging(\d)\.", r"stages.\1.downsample.conv.", key)
        key = re.sub(
            r"^(conv_s1_28|conv_s1_14|conv_s2_14)\.",
            lambda m: f"cross_shortcuts.chains.{_STRIPMLP_SHORTCUTS[m[1]]}.",
            key,
        )
        key = re.sub(r"^norm\.", "head.norm.", key)
        key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        key = re.sub(r"\.embeddings_table$", ".table", key)
        if m := re.match(r"^blocks(\d)\.(\d+)\.", key):
            block, rest = f"stages.{int(m[1]) - 1}.blocks.{m[2]}", key[m.end() :]
            if rest.startswith("token_mixing."):
                rest = rest[len("token_mixing.") :]
                name = max((n for n in _STRIPMLP_MIXER_NAMES if rest.startswith(n + ".")), key=len, default=None)
                rest = f"token_mixer.{_STRIPMLP_MIXER_NAMES[name]}{rest[len(name) :]}" if name else rest
            elif m2 := re.match(r"^channel_mixing\.(\w+)\.", rest):
                rest = f"mlp.{_STRIPMLP_CHANNEL_NAMES.get(m2[1], m2[1])}.{rest[m2.end() :]}"
            key = f"{block}.{rest}"
        out[key] = value
    return out


# (description, detect, convert): the official key layouts the zoo knows. A family whose authors released
# weights adds its entry here.
OFFICIAL_LAYOUTS: list[tuple[str, Callable[[StateDict], bool], Callable[[StateDict], StateDict]]] = [
    ("official PoolFormer v1 (sail-sg/poolformer)", _metaformer_v1_detect, _metaformer_v1_convert),
    ("official MetaFormer baselines (sail-sg/metaformer)", _metaformer_v2_detect, _metaformer_v2_convert),
    ("official AFFNet (microsoft/TokenMixers)", _affnet_detect, _affnet_convert),
    ("official Strip-MLP (Med-Process/Strip_MLP)", _stripmlp_detect, _stripmlp_convert),
]

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read safely: its path and what is wrong with it."""


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with an error that names the file and the problem.

    ``mmap=True`` maps the file instead of reading it: cheap when only a few plain values are needed (the
    position of a training checkpoint), as tensors are not read until touched. Only the zip format (``torch.save``'s
    default since 1.6) can be mapped; a file in the legacy format is read in full."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(
            f"Checkpoint {path!r} is empty (0 bytes): its write was interrupted (or the disk was full). "
            "Use another checkpoint (the run directory keeps last.pth, best.pth and step checkpoints)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        # torch's message here invites a load with weights_only=False, i.e. running whatever the file holds: it is
        # not passed on. A GLOBAL it refused means the pickle names Python objects; anything else, bad bytes.
        globals_named = re.findall(r"GLOBAL ([\w.]+)", str(err))
        if globals_named:
            problem = (
                f"it holds Python objects ({', '.join(sorted(set(globals_named)))}), not only tensors and plain "
                "containers; unpickling those could run arbitrary code, so it is refused. Only checkpoints of "
                "tensors (state dicts, train.py's checkpoints) are read"
            )
        else:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
            problem = "it is corrupt or not a PyTorch checkpoint" + (f" ({detail[1].strip()})" if detail else "")
    except (
        EOFError,
        RuntimeError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        LookupError,
        TypeError,
        struct.error,
    ) as err:
        # (garbage bytes can fail anywhere in the unpickler: a memo lookup, an opcode's argument)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        problem = f"it is truncated, corrupt or not a PyTorch checkpoint ({type(err).__name__}: {first_line})"
    raise CheckpointError(f"Cannot read checkpoint {path!r} ({size} bytes): {problem}.") from None


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> StateDict:
    """A plain state dict from a path (``read_checkpoint``) or a mapping, unwrapping training checkpoints
    (``{"model": ...}``, ``{"state_dict": ...}``) and DDP/compile prefixes (``module.``, ``_orig_mod.``)."""
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(source)
    if not isinstance(source, Mapping):
        raise TypeError(f"A checkpoint must be a path or a state dict (a mapping); got {type(source).__name__}.")
    for key in _WRAPPER_KEYS:
        if key in source and isinstance(source[key], Mapping):
            source = source[key]
            break
    state_dict = {}
    for key, value in source.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state_dict[key] = value
    return state_dict


def _convert(state_dict: StateDict, model: nn.Module) -> tuple[StateDict, str]:
    own = model.state_dict()
    if set(state_dict) == set(own):
        layout = "zoo/timm"
    else:
        layout = "zoo/timm"
        for description, detect, convert in OFFICIAL_LAYOUTS:
            if detect(state_dict):
                state_dict, layout = convert(state_dict), description
                break
    # timm and the official v1 code use 1x1 convs where the zoo has Linear layers: same numbers, other shape.
    out = {}
    for key, value in state_dict.items():
        if key in own and value.shape != own[key].shape and value.numel() == own[key].numel():
            value = value.reshape(own[key].shape)
        out[key] = value
    return out, layout


def _mismatch(state_dict: StateDict, model: nn.Module, exempt: Callable[[str], bool] = lambda key: False) -> list[str]:
    """The missing, unexpected and mis-shaped keys of ``state_dict`` for ``model`` (keys ``exempt`` says are adapted
    elsewhere left out), each kind as one line of at most 20 names; empty when it fits."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state_dict) if not exempt(k))
    unexpected = sorted(k for k in set(state_dict) - set(own) if not exempt(k))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if state_dict[k].shape != own[k].shape and not exempt(k)
    ]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            problems.append(f"{len(items)} {title}: {shown}")
    return problems


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> StateDict:
    """timm's ``pretrained_filter_fn``: any known layout -> the zoo's keys and shapes, or a ``ValueError`` naming the
    missing, unexpected and mis-shaped keys when the checkpoint was written for another model.

    timm loads non-strictly whenever ``num_classes`` differs from the pretrained cfg's, which would leave a model of
    random weights behind a warning; so the fit is checked here, leaving out only what timm adapts after this filter:
    the classifier (pretrained cfg ``classifier``, or ``get_classifier()``) and the first conv's weight (``first_conv``,
    re-summed for another ``in_chans``)."""
    state_dict, layout = _convert(read_state_dict(state_dict), model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classifiers = cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    first_convs = cfg.get("first_conv") or ()
    first_weights = {f"{name}.weight" for name in ((first_convs,) if isinstance(first_convs, str) else first_convs)}
    adapted = _classifier_keys(model)
    problems = _mismatch(
        state_dict, model, lambda key: key in adapted or key.startswith(prefixes) or key in first_weights
    )
    if problems:
        name = cfg.get("architecture") or type(model).__name__
        raise ValueError(
            f"Pretrained checkpoint (detected layout: {layout}) does not fit {name}: "
            + "; ".join(problems)
            + ". Check that the file (pretrained_cfg_overlay=dict(file=...)) was written for this model and size."
        )
    return state_dict


def check_pretrained_file(variant: str, **kwargs: Any) -> None:
    """Read the local file that ``pretrained_cfg``/``pretrained_cfg_overlay`` in ``kwargs`` point ``variant``'s
    pretrained weights at with ``read_checkpoint`` (mapped: the tensors are not read), so that a missing, empty,
    truncated or unsafe file is a ``CheckpointError`` naming it and the problem before timm's own read (an
    ``EOFError``, or an invitation to load with ``weights_only=False``). Files timm reads another way (``.safetensors``)
    and downloads are left to timm."""
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    ).to_dict()
    path = cfg.get("file")
    if cfg.get("state_dict") is not None or not path or cfg.get("source") in ("hf-hub", "local-dir"):
        return
    if not os.fspath(path).endswith(".safetensors"):
        read_checkpoint(path, mmap=True)


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (timm's ``get_classifier()``), e.g. ``head.fc.weight``."""
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if get_classifier is not None else None
    if not isinstance(classifier, nn.Module):
        return set()
    ids = {id(t) for t in (*classifier.parameters(), *classifier.buffers())}
    named = (*model.named_parameters(), *model.named_buffers())
    return {name for name, tensor in named if id(tensor) in ids}


def _keep_new_classifier(state_dict: StateDict, model: nn.Module) -> list[str]:
    """The classifier tensors of ``model`` to keep as initialised: those the checkpoint has with another shape
    (another class count), or all of them where the checkpoint has none (saved with ``num_classes=0``). The
    misfitting ones are dropped from ``state_dict``."""
    own = model.state_dict()
    classifier = _classifier_keys(model)
    misfit = {k for k in classifier if k in state_dict and state_dict[k].shape != own[k].shape}
    missing = {k for k in classifier if k not in state_dict}
    if missing and not misfit and len(missing) < len(classifier):
        return []  # part of a head missing is not a class-count change: the strict check reports it
    for key in misfit:
        del state_dict[key]
    return sorted(misfit | missing)


def load_checkpoint(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any], reset_classifier: bool = False
) -> str:
    """Load ``source`` into ``model`` strictly; returns the layout that was detected.

    ``reset_classifier=True`` is for fine-tuning onto another class count (timm's ``pretrained`` with
    ``num_classes``): where the checkpoint's classifier (``model.get_classifier()``: e.g. ``head.fc``; for an MLP
    head only its layers whose shape differs) has another shape, or is absent, the model keeps its freshly
    initialised one and a warning says so. Everything else still has to fit exactly.

    Raises ``ValueError`` naming every missing, unexpected and mis-shaped key if the checkpoint does not fit.
    """
    state_dict, layout = _convert(read_state_dict(source), model)
    own = model.state_dict()
    if reset_classifier and (kept := _keep_new_classifier(state_dict, model)):
        shapes = ", ".join(f"{k} {tuple(own[k].shape)}" for k in kept)
        _logger.warning(
            f"the checkpoint's classifier does not fit this model's class count: kept the new {shapes} "
            "(fine-tuning onto other classes); every other weight is loaded from the checkpoint."
        )
        state_dict.update({k: own[k] for k in kept})
    problems = _mismatch(state_dict, model)
    if problems:
        raise ValueError(
            f"Checkpoint (detected layout: {layout}) does not fit {type(model).__name__}: "
            + "; ".join(problems)
            + ". Check that the checkpoint was written for this model and size (and num_classes)."
        )
    model.load_state_dict(state_dict, strict=True)
    return layout
