"""The model contract, once, over every timm name the zoo registers and every model config (configs/model/*.yaml;
a config that is ``timm.create_model`` of a zoo name is that name's case): forward at the default input size and at
a second, odd non-square size (grid-bound models refuse it, naming the grid they were built for), backward reaching
every parameter, ``forward_intermediates`` and ``features_only`` maps, a state-dict round trip, bf16 autocast on the
CPU, and ``torch.compile`` (slow; see ``COMPILE``). Models are built with one block per stage (three in single-stage
models, for the three taps ``features_only`` takes) and, where the family takes them, small widths; layouts are the
family's. Published sizes, official layouts and equivalences live in the family and builder tests."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._features import FeatureGetterNet

from mixerzoo.models import MetaFormer
from tests.conftest import MODEL_CONFIGS, ZOO_TIMM_NAMES, build_model


def _is_zoo_name(config: str) -> bool:
    return config in ZOO_TIMM_NAMES


CASES = [("timm", n) for n in ZOO_TIMM_NAMES] + [("config", c) for c in MODEL_CONFIGS if not _is_zoo_name(c)]
IDS = [f"{kind}:{name}" for kind, name in CASES]
SECOND_SIZE = (97, 65)  # odd and non-square
SMALL_SIZE = 64  # every check but the forward at the default size, to keep the suite quick
NUM_CLASSES = 7
# one small member per family for torch.compile, with the backend it is compiled by. Every case traces into one graph
# (fullgraph) and runs AOT autograd's functionalised, decomposed graph (aot_eager): what the model must get right. Two
# cases go on through inductor's C++ code generation (cold, 25-75 s a model on 2 cores; inductor's own concern
# otherwise): vim2_t, whose scan is a custom op inductor must leave opaque, and randformer_s12, a plain MetaFormer.
COMPILE = [
    ("timm", "identityformer_s12", "aot_eager"),
    ("timm", "randformer_s12", "inductor"),
    ("timm", "affnet_et", "aot_eager"),
    ("timm", "stripmlp_t_light", "aot_eager"),
    ("timm", "hydra_vit_s", "aot_eager"),
    ("timm", "vim2_t", "inductor"),
    ("config", "caformer_s18", "aot_eager"),
    ("config", "mamba_mixer_metaformer_s12", "aot_eager"),
]


def _builder(kind: str) -> Callable[..., nn.Module]:
    return timm.create_model if kind == "timm" else build_model


@cache
def _small_options(kind: str, name: str) -> dict[str, Any]:
    """One block per stage (three in single-stage models) and, where the family accepts them, narrow stages."""
    build = _builder(kind)
    with torch.device("meta"):
        model = build(name)
    stages = getattr(model, "stages", None)
    if stages is None:  # configs/model/timm.yaml: a timm model (resnet18), as it is
        return {}
    options: dict[str, Any] = {"depths": (3,) if len(stages) == 1 else (1,) * len(stages)}
    narrow = {1: (64,), 3: (32, 64, 128), 4: (32, 64, 96, 128)}.get(len(stages))
    if narrow is not None:
        try:
            with torch.device("meta"):
                build(name, **options, dims=narrow)(torch.empty(1, 3, 224, 224))
            options["dims"] = narrow
        except (ValueError, TypeError, RuntimeError, AssertionError):
            pass  # the family fixes its widths (or their ratios)
    return options


def _model(kind: str, name: str, small: bool = True, seed: int = 0, **kwargs: Any) -> nn.Module:
    """``small``: built for (and run at) SMALL_SIZE, which grid-bound models need to know (``img_size``)."""
    torch.manual_seed(seed)
    options = _small_options(kind, name)
    if small and "depths" in options:  # a zoo model (not the timm config's resnet18)
        options = {**options, "img_size": SMALL_SIZE}
    return _builder(kind)(name, num_classes=NUM_CLASSES, **options, **kwargs)


def _features_only(kind: str, name: str, levels: int) -> nn.Module:
    """``features_only=True`` where the model is made by ``timm.create_model``; a builder config's MetaFormer is
    wrapped the way timm wraps it (``feature_cls="getter"``: ``forward_intermediates`` behind the feature API)."""
    if kind == "timm" or name == "timm":  # (the other configs made by timm.create_model are zoo names: kind timm)
        return _model(kind, name, features_only=True)
    return FeatureGetterNet(_model(kind, name), out_indices=tuple(range(levels)))


def _default_size(model: nn.Module) -> tuple[int, int]:
    return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-2:])


def _grid_bound(model: nn.Module) -> bool:
    """A mixer built for one token grid (random mixing, strip MLPs); timm names say so in their pretrained cfg."""
    bound = any(getattr(m, "grid", None) is not None for m in model.modules())
    fixed = getattr(model, "pretrained_cfg", {}).get("fixed_input_size")
    assert fixed is None or fixed == bound, f"pretrained_cfg fixed_input_size={fixed}, grid-bound mixers: {bound}"
    return bound


def _x(size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_forward_at_the_default_size_and_at_a_second_where_allowed(kind: str, name: str) -> None:
    """Full-size models, so one forward at the default size (batch 1); the head is checked on its features."""
    model = _model(kind, name, small=False).eval()
    size = _default_size(model)
    with torch.no_grad():
        features = model.forward_features(_x(size, batch=1))
        assert features.shape[1] == model.num_features
        out = model.forward_head(features)
        assert out.shape == (1, NUM_CLASSES) and torch.isfinite(out).all()
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, getattr(model, "head_hidden_size", model.num_features))
        if _grid_bound(model):
            with pytest.raises(ValueError, match="built for a"):
                model(_x(SECOND_SIZE, batch=1))
        else:
            assert model(_x(SECOND_SIZE, batch=1)).shape == (1, NUM_CLASSES)
        model.reset_classifier(0)
        assert model.forward_head(features).shape == (1, model.num_features)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_backward_reaches_every_parameter(kind: str, name: str) -> None:
    model = _model(kind, name).train()
    x = _x((SMALL_SIZE, SMALL_SIZE)).requires_grad_()
    model(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_forward_intermediates_and_features_only_give_the_feature_info_maps(kind: str, name: str) -> None:
    model = _model(kind, name).eval()
    x = _x((SMALL_SIZE, SMALL_SIZE))
    if not hasattr(model, "forward_intermediates"):
        pytest.skip(f"{type(model).__name__} has no forward_intermediates")
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(maps) == len(model.feature_info)
        for info, m in zip(model.feature_info, maps):
            assert m.shape == (2, info["num_chs"], x.shape[2] // info["reduction"], x.shape[3] // info["reduction"])
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(last_two, maps[-2:])
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early, maps[:2])
        if isinstance(model, MetaFormer):  # (the timm config's resnet18 gives NCHW only)
            nhwc = model.forward_intermediates(x, indices=[1], output_fmt="NHWC", intermediates_only=True)[0]
            torch.testing.assert_close(nhwc, maps[1].permute(0, 2, 3, 1))
            nlc = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)[0]
            torch.testing.assert_close(nlc, maps[1].flatten(2).transpose(1, 2))
        features = _features_only(kind, name, len(maps)).eval()
        out = features(x)
    indices = features.feature_info.out_indices
    assert len(indices) >= 3
    assert features.feature_info.channels() == [m.shape[1] for m in out]
    torch.testing.assert_close(out, [maps[i] for i in indices])


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_state_dict_round_trip_gives_the_same_model(kind: str, name: str) -> None:
    model = _model(kind, name).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    other = _model(kind, name, seed=1).eval()  # another initialisation, replaced by the saved one
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in other.state_dict().items())
    other.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    x = _x((SMALL_SIZE, SMALL_SIZE))
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), CASES, ids=IDS)
def test_bf16_autocast_forward_and_backward_on_the_cpu(kind: str, name: str) -> None:
    model = _model(kind, name)
    x = _x((SMALL_SIZE, SMALL_SIZE))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    out.float().square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    with torch.no_grad():
        reference = model(x)
    relative = (out.detach().float() - reference).norm() / reference.norm()
    assert relative < 0.1, f"bf16 output {relative:.3f} away from float32"


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name", "backend"), COMPILE, ids=[f"{k}:{n}:{b}" for k, n, b in COMPILE])
def test_torch_compile_matches_eager(kind: str, name: str, backend: str) -> None:
    model = _model(kind, name).eval()
    x = _x((SMALL_SIZE, SMALL_SIZE))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = model(x)
        compiled = torch.compile(model, backend=backend, fullgraph=True)(x)  # one graph, no break
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
