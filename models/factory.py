"""One way to build every model: ``build_model(spec, data)``, used by ``train.py``, the benchmark, the collector,
the tools and the tests.

A model *spec* is a name, or a mapping with ``name`` plus options (what ``configs/model/<name>.yaml`` holds):

- a zoo layout (``list_layouts()``: written once in Python beside its family, ``mixerzoo.models.registry.LAYOUTS``)
  with options merged into it (``merge_options``: ``block={"norm": "layernorm"}`` changes one block option). A
  generated config also says which layout it holds (``layout: <name>``): a spec whose ``name`` was changed to
  another layout raises instead of building the new name with the old layout's options (choose ``model=<name>``);
- ``metaformer``: the builder itself, with the spec's options and no layout (a custom architecture);
- any other timm model name (``{"name": "resnet18"}``), or any timm name with ``source: timm``
  (``configs/model/timm.yaml``; also timm's own ``caformer_s18``, which the zoo builds differently), its options
  passed to ``timm.create_model``.

Model configs saved by earlier versions (``_target_: mixerzoo.MetaFormer`` or ``_target_: timm.create_model`` with
``model_name``: the stored config of older checkpoints and run folders) are read as the same specs.

A *data* spec (``train.py``'s ``data`` config, or any mapping with ``num_classes``, ``in_chans`` and ``img_size``)
gives the class count and channels, and zoo models are built for its image size (grid-bound mixers depend on it).

How the zoo's names relate to timm's: the families the zoo adds (IdentityFormer, RandFormer, AFFNet, Strip-MLP,
Hydra-ViT, ViM2) are registered in timm, so ``timm.create_model(name)`` and ``build_model(name)`` build the same
model. PoolFormer/PoolFormerV2/ConvFormer/CAFormer names are timm's own: ``timm.create_model("caformer_s18")`` is
timm's model (same architecture and parameter count, timm's key layout), while ``build_model("caformer_s18")`` and
``python train.py model=caformer_s18`` build the zoo's (``mixerzoo.load_checkpoint`` converts timm's weights).
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Mapping
from typing import Any

import timm
import torch.nn as nn
import yaml

from ..registry import Spec, plain, split_spec
from .backbone import MetaFormer
from .registry import LAYOUTS, merge_options

__all__ = [
    "BUILDER",
    "DATA_KEYS",
    "build_model",
    "create_model",
    "is_zoo_model",
    "layout_config",
    "legacy_spec",
    "list_layouts",
]

DATA_KEYS = ("num_classes", "in_chans", "img_size")  # what the data spec decides
BUILDER = "metaformer"  # the spec name of the builder with options of its own, no layout
SOURCES = ("zoo", "timm")


def list_layouts() -> list[str]:
    """The zoo's named models (every one has ``configs/model/<name>.yaml``), sorted."""
    return LAYOUTS.names()


def is_zoo_model(name: str) -> bool:
    """A zoo layout, the builder, or a timm name the zoo registers (built for the data's image size)."""
    return (
        name in LAYOUTS
        or name == BUILDER
        or (timm.is_model(name) and timm.models.model_entrypoint(name).__module__.startswith("mixerzoo."))
    )


def _data_options(data: Any, name: str, zoo: bool | None = None) -> dict[str, Any]:
    if data is None:
        return {}
    # only the keys the model needs (a data config may hold interpolations that resolve only inside a Hydra run)
    data = {k: plain(data.get(k)) if isinstance(data, Mapping) else getattr(data, k, None) for k in DATA_KEYS}
    if data.get("num_classes") is None:
        raise ValueError(
            "data.num_classes is null: it is taken from the data when the datasets are built (train.py); set "
            "data.num_classes=<count> to build the model on its own."
        )
    options = {"num_classes": data["num_classes"], "in_chans": 3 if data["in_chans"] is None else data["in_chans"]}
    if (is_zoo_model(name) if zoo is None else zoo) and data.get("img_size") is not None:
        options["img_size"] = data["img_size"]  # grid-bound mixers are built for the data's size
    return options


def _unknown_model(name: str) -> ValueError:
    close = difflib.get_close_matches(name, list_layouts(), n=3, cutoff=0.6)
    close += [n for n in timm.list_models(f"*{name.split('.')[0][:8]}*")[:5] if n not in close]
    return ValueError(
        f"Unknown model {name!r}: neither a zoo layout nor a timm model."
        + (f" Did you mean {', '.join(repr(c) for c in close[:5])}?" if close else "")
        + " Zoo models: python -m mixerzoo models (train.py: model=<name>); any timm model: model=timm "
        "model.name=<timm name>."
    )


def legacy_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A model config of an earlier version (``_target_`` + constructor keywords) as a spec; others unchanged."""
    spec = plain(spec)
    target = spec.pop("_target_", None)
    if target is None:
        return spec
    if target == "timm.create_model":
        return {"name": spec.pop("model_name"), "source": "timm", **spec}
    if target.rsplit(".", 1)[-1] == "MetaFormer":
        return {"name": BUILDER, **spec}
    raise ValueError(f"A model config with _target_={target!r} is not a model spec; give name: <model> instead.")


def build_model(spec: Spec, data: Any = None, *, pretrained: bool = False, **options: Any) -> nn.Module:
    """The model ``spec`` names, with ``options`` merged into its options, for ``data`` (its class count, channels
    and, for zoo models, image size). A spec option that the data decides and that disagrees with it raises."""
    name, spec_options = split_spec(legacy_spec(spec) if isinstance(spec, Mapping) else spec, "model")
    spec_options = merge_options(spec_options, options)
    pretrained = bool(spec_options.pop("pretrained", False)) or pretrained  # a config may say pretrained: true
    source = spec_options.pop("source", "zoo")
    if source not in SOURCES:
        raise ValueError(f"model {name!r}: source={source!r}; use one of {SOURCES}.")
    layout_of_config = spec_options.pop("layout", name)
    if layout_of_config != name:
        raise ValueError(
            f"model.name={name!r} on the config of {layout_of_config!r}: its options are {layout_of_config}'s. "
            f"Choose the model with model={name} (python train.py) or build_model({name!r})."
        )
    if source == "timm":
        if not timm.is_model(name):
            raise _unknown_model(name)
        zoo = timm.models.model_entrypoint(name).__module__.startswith("mixerzoo.")
        return timm.create_model(name, pretrained=pretrained, **spec_options, **_data_options(data, name, zoo=zoo))
    from_data = _data_options(data, name)
    clash = {k: (spec_options[k], v) for k, v in from_data.items() if k in spec_options and spec_options[k] != v}
    if clash:
        said = ", ".join(f"{k}={a!r} in the model spec but {b!r} from the data" for k, (a, b) in clash.items())
        raise ValueError(
            f"model {name!r}: {said}. Set them on the data (data.num_classes, data.in_chans, data.img_size), not "
            "on the model."
        )
    spec_options.update(from_data)
    if name == BUILDER:
        return MetaFormer(**spec_options)
    if name in LAYOUTS:
        layout = LAYOUTS.get(name)
        if layout.timm:  # the family's registration adds timm's pretrained cfg and features_only support
            # called directly: timm.create_model drops None-valued options (downsample=None would vanish)
            return timm.models.model_entrypoint(name)(pretrained=pretrained, **layout(**spec_options))
        if pretrained:
            raise ValueError(
                f"{name!r} is built by the zoo's builder and has no weights of its own; load a file with "
                "mixerzoo.load_checkpoint(model, path) (timm's and the official key layouts are converted)."
            )
        return MetaFormer(**layout(**spec_options))
    if timm.is_model(name):
        return timm.create_model(name, pretrained=pretrained, **spec_options)
    raise _unknown_model(name)


def create_model(name: str, pretrained: bool = False, **options: Any) -> nn.Module:
    """``build_model(name, pretrained=pretrained, **options)``: any zoo layout or timm name, with options
    (``create_model("caformer_s18", mixer=["pooling", "pooling", "attention", "attention"], num_classes=100)``)."""
    return build_model(name, pretrained=pretrained, **options)


def layout_config(name: str) -> str:
    """The text of ``configs/model/<name>.yaml``: the layout's name and options (less what the data decides),
    generated from the layout so that a config never drifts from the model it names."""
    layout = LAYOUTS.get(name)
    options = {k: v for k, v in layout().items() if k not in DATA_KEYS}
    first = {k: options.pop(k) for k in ("mixer", "depths", "dims") if k in options}  # the keys most overridden
    spec = {"name": name, "layout": name, **first, **options}
    body = yaml.safe_dump(spec, sort_keys=False, default_flow_style=None, width=120)
    source = layout.module.replace("mixerzoo.", "").replace(".", "/") + ".py"
    header = (
        f"{layout.summary}. Generated from the layout in {source} (python tools/model_configs.py --write): do not "
        "edit. Override its keys on the command line (model.mixer=sepconv, model.drop_path_rate=0.1) or in an "
        "experiment config; for another model choose model=<name>."
    )
    return "".join(f"# {line}\n" for line in textwrap.wrap(header, 116)) + body
