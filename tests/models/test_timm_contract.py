"""timm's model contract for every family of the zoo, on small members (timm's own ``tests/test_models.py`` runs over
every registered name in CI, ``.ci/timm_model_tests.sh``, with the selection checked here).

Per family: ``features_only`` with every ``feature_cls`` (the default, ``"getter"``, ``"fx"``, ``"hook"``) giving the
same maps as ``forward_intermediates``; ``prune_intermediate_layers``; FX tracing with timm's notrace registries,
forward equal and backward reaching every parameter; TorchScript (model and FX graph) equal to the model; gradient
checkpointing (weighted averaging included) giving the same outputs and gradients; the API checks of timm's
``test_model_default_cfgs`` on every name. ``forward_intermediates`` (indices, ``stop_early``, formats) is checked on
every model in test_contract.py; ``device``/``dtype`` in test_device_dtype.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from mixerzoo.models import MetaFormer
from tests.conftest import ZOO_TIMM_NAMES

REPO = Path(__file__).resolve().parents[2]

# one member per family, made small through the family's own builder options (the layouts are the family's)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "identityformer": ("identityformer_s12", dict(depths=(1, 1, 1, 1))),
    "randformer": ("randformer_s12", dict(depths=(1, 1, 2, 1), img_size=64)),
    "stripmlp": ("stripmlp_t_light", dict(depths=(1, 1, 2, 1), dims=(40, 80, 160, 320), img_size=64)),
    "affnet": ("affnet_et", dict(img_size=64)),
    "hydra_vit": ("hydra_vit_s", dict(depths=(4,), dims=(64,))),
    "vim2": ("vim2_t", dict(depths=(2, 2, 2, 2), dims=(16, 32, 64, 128))),
}
SIZE = {"vim2": 32}  # input side, default 64 (the PyTorch selective scan steps through every token)


def _model(family: str, **kwargs: Any) -> nn.Module:
    name, options = FAMILIES[family]
    torch.manual_seed(0)
    return timm.create_model(name, **{**options, **kwargs})


def _x(family: str) -> torch.Tensor:
    side = SIZE.get(family, 64)
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """The whole model as an FX graph, traced as timm's tests trace (timm's notrace modules and functions)."""
    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    )


def _only(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    (value,) = outputs.values()
    return value


def _nchw(maps: list[torch.Tensor], output_fmt: str) -> list[torch.Tensor]:
    return [m.permute(0, 3, 1, 2) if output_fmt == "NHWC" else m for m in maps]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_models_keep_their_taps_and_train(family: str) -> None:
    """timm's ``test_prune_intermediate_layers_contract``: pruned taps equal the full model's; a pruned model's
    features end at its last tap and every parameter it keeps gets a gradient."""
    model = _model(family).eval()
    x = _x(family)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    for i in (0, len(maps) - 2):
        pruned = _model(family).eval()
        kept = pruned.prune_intermediate_layers([i])
        with torch.no_grad():
            torch.testing.assert_close(
                pruned.forward_intermediates(x, indices=kept, intermediates_only=True)[0], maps[i]
            )
            torch.testing.assert_close(pruned.forward_features(x), maps[i])
            pruned.reset_classifier(0, "avg")  # the pruned head keeps no norm: pooled taps
            torch.testing.assert_close(pruned(x), maps[i].mean(dim=(2, 3)))
        pruned.train()
        pruned.forward_features(x).sum().backward()
        assert [n for n, p in pruned.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx", "hook"])
@pytest.mark.parametrize("family", FAMILIES)
def test_features_only_gives_the_intermediates_with_every_feature_cls(family: str, feature_cls: str | None) -> None:
    reference = _model(family).eval()
    with torch.no_grad():
        expected = reference.forward_intermediates(_x(family), intermediates_only=True)
    kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
    features = _model(family, features_only=True, **kwargs).eval()
    indices = features.feature_info.out_indices
    output_fmt = getattr(features.output_fmt, "value", features.output_fmt)
    assert len(indices) >= 3  # as timm's test_model_forward_features asks of every model
    with torch.no_grad():
        maps = _nchw(features(_x(family)), output_fmt)
    assert features.feature_info.channels() == [m.shape[1] for m in maps]
    torch.testing.assert_close(maps, [expected[i] for i in indices])


def test_single_stage_models_tap_every_block_like_timms_vit() -> None:
    with torch.device("meta"):
        model = timm.create_model("hydra_vit_b")
    assert [f["module"] for f in model.feature_info] == [f"stages.0.blocks.{j}" for j in range(24)]
    assert {f["reduction"] for f in model.feature_info} == {16}
    features = timm.create_model("hydra_vit_s", depths=(5,), dims=(64,), features_only=True)
    assert features.feature_info.out_indices == (2, 3, 4)  # the last three, as timm's ViT
    fx = timm.create_model("hydra_vit_s", depths=(5,), dims=(64,), features_only=True, feature_cls="fx")
    assert str(fx.output_fmt.value) == "NHWC"  # blocks run channels-last; module taps say so


def test_stripmlp_takes_feature_cls_by_keyword() -> None:
    """The family's default ("getter") is a default: a caller's feature_cls replaces it (was a TypeError);
    extractors that would skip the cross-stage shortcuts are refused."""
    for feature_cls in ("getter", "fx", "hook"):
        model = timm.create_model("stripmlp_t_light", depths=(1, 1, 1, 1), features_only=True, feature_cls=feature_cls)
        assert model.feature_info.reduction() == [4, 8, 16, 32]
    with pytest.raises(ValueError, match="skips the cross-stage shortcuts"):
        timm.create_model("stripmlp_t_light", features_only=True, feature_cls="list")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_fx_graph_equals_the_model_and_trains(family: str) -> None:
    """timm's ``test_model_forward_fx`` and ``test_model_backward_fx``."""
    model = _model(family).eval()
    x = _x(family)
    with torch.inference_mode():
        expected = model(x)
        traced = _only(_fx_model(model)(x))
    torch.testing.assert_close(traced, expected, rtol=1e-4, atol=1e-5)
    graph = _fx_model(_model(family, num_classes=7).train(), train=True)
    out = _only(graph(x))
    assert out.shape == (x.shape[0], 7)
    out.mean().backward()
    assert [n for n, p in graph.named_parameters() if p.grad is None] == []


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_torchscript_equals_the_model(family: str) -> None:
    """timm's ``test_model_forward_torchscript`` and the scripted graph of ``test_model_forward_fx_torchscript``. The
    SSM mixers script their plain-PyTorch forms (Hydra's materialised matrix, the sequential selective scan)."""
    model = _model(family).eval()
    x = _x(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of torch.compile/export
        scripted = torch.jit.script(model)
        scripted_graph = torch.jit.script(_fx_model(model))
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(_only(scripted_graph(x)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(family: str) -> None:
    """Also in weighted-averaging stages (ViM2), where each block is recomputed from the stage's earlier outputs."""
    x = _x(family)
    results = []
    for checkpointing in (False, True):
        model = _model(family).train()
        model.set_grad_checkpointing(checkpointing)
        out = model(x)
        _, maps = model.forward_intermediates(x)
        (out.square().mean() + sum(m.mean() for m in maps)).backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (out0, grads0), (out1, grads1) = results
    torch.testing.assert_close(out1, out0)
    for g0, g1 in zip(grads0, grads1):
        torch.testing.assert_close(g1, g0)


def test_grad_checkpointing_recomputes_weighted_averaging_blocks() -> None:
    """Checkpointed averaging stages run each block a second time in the backward pass (not a silent no-op)."""
    model = _model("vim2").train()
    model.set_grad_checkpointing(True)
    calls = []
    model.stages[1].blocks[0].token_mixer.register_forward_pre_hook(lambda *_: calls.append(1))
    model(_x("vim2")).mean().backward()
    assert len(calls) == 2  # the token mixer started in the forward and again in the recomputation


@pytest.mark.parametrize("name", ZOO_TIMM_NAMES)
def test_model_api_contract(name: str) -> None:
    """The API checks of timm's ``test_model_default_cfgs`` (``_assert_model_api_contract``), on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(name)
        with pytest.raises(TypeError):
            timm.create_model(name, not_a_model_arg=1)
    assert isinstance(model, MetaFormer)
    assert model.in_chans == model.default_cfg["input_size"][0]
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1
    params = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= params
    assert len(model.feature_info) >= 3


# --- the CI selection of timm's own model tests (.ci/timm_zoo_plugin.py) ----------------------------------------
# A stand-in for timm 1.0.31's tests/test_models.py: its generic tests, parametrised as timm parametrises them (by
# name, by tagged name, by module, by pretrained weights), with empty bodies. {param} is the parameter's name.
TIMM_STYLE_TESTS = """
import os
import pytest
from timm import list_models

FEAT_INTER_FILTERS = ["resnet", "vision_transformer"]
NON_STD_FILTERS = ["vit_*", "poolformer_*"]
EXCLUDE_FILTERS = ["*enormous*"]

def _test(name, models):
    def case({param}):
        pass

    case.__name__ = case.__qualname__ = name
    globals()[name] = pytest.mark.parametrize("{param}", models)(case)

for name in ["test_model_forward", "test_model_forward_torchscript", "test_model_forward_fx"]:
    _test(name, list_models(exclude_filters=EXCLUDE_FILTERS))
for name in ["test_model_backward", "test_model_backward_fx"]:
    _test(name, list_models(exclude_filters=EXCLUDE_FILTERS, name_matches_cfg=True))
_test("test_model_default_cfgs", list_models(exclude_filters=EXCLUDE_FILTERS + NON_STD_FILTERS, include_tags=True))
_test("test_model_default_cfgs_non_std", list_models(filter=NON_STD_FILTERS, include_tags=True))
_test("test_model_forward_features", list_models(exclude_filters=EXCLUDE_FILTERS + NON_STD_FILTERS))
for name in ["test_model_forward_intermediates", "test_model_forward_intermediates_features",
             "test_prune_intermediate_layers_contract"]:
    _test(name, list_models(module=FEAT_INTER_FILTERS, exclude_filters=EXCLUDE_FILTERS))
_test("test_model_inference", ["test_resnet.r160_in1k"])
if "GITHUB_ACTIONS" not in os.environ:
    _test("test_model_load_pretrained", list_models(pretrained=True))
    _test("test_model_features_pretrained", list_models(pretrained=True, exclude_filters=NON_STD_FILTERS))
    _test("test_model_forward_fx_torchscript", list_models(exclude_filters=EXCLUDE_FILTERS, name_matches_cfg=True))
"""
WITH_WEIGHTS = [n for n in ZOO_TIMM_NAMES if n.startswith(("identityformer", "randformer"))]  # sail-sg releases


def _collect_timm_style(tmp_path: Path, param: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_models.py").write_text(TIMM_STYLE_TESTS.replace("{param}", param))
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / ".ci"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "test_models.py", "-p", "timm_zoo_plugin", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*command, "--collect-only", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_ci_selection_collects_every_generic_timm_test_once_per_zoo_name(tmp_path: Path) -> None:
    """Config tests on tagged names, the tests timm selects by module (intermediates, prune) and the pretrained ones
    are collected for the zoo, once per name, and nothing of timm's own models."""
    result = _collect_timm_style(tmp_path, "model_name")
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [line.split("::")[1] for line in result.stdout.splitlines() if "::" in line]
    counts: dict[str, int] = {}
    for case in cases:
        test, name = case.rstrip("]").split("[")
        assert name.split(".")[0] in ZOO_TIMM_NAMES, case
        counts[test] = counts.get(test, 0) + 1
    everywhere = ["forward", "backward", "default_cfgs", "forward_torchscript", "forward_features",
                  "forward_intermediates_features", "forward_intermediates", "forward_fx", "backward_fx",
                  "forward_fx_torchscript"]  # fmt: skip
    expected = {f"test_model_{t}": len(ZOO_TIMM_NAMES) for t in everywhere}
    expected["test_prune_intermediate_layers_contract"] = len(ZOO_TIMM_NAMES)
    expected |= {"test_model_load_pretrained": len(WITH_WEIGHTS), "test_model_features_pretrained": len(WITH_WEIGHTS)}
    assert counts == expected
    assert {c.split("[")[1].rstrip("]") for c in cases if c.startswith("test_model_default_cfgs[")} == {
        n for n in timm.list_models(include_tags=True) if n.split(".")[0] in ZOO_TIMM_NAMES
    }


def test_ci_selection_fails_loudly_when_timm_renames_the_model_parameter(tmp_path: Path) -> None:
    result = _collect_timm_style(tmp_path, "model")
    assert result.returncode != 0
    expected = f"test_model_default_cfgs: 0 zoo cases collected, expected {len(ZOO_TIMM_NAMES)}"
    assert expected in result.stdout + result.stderr
