"""The backbone builder and the named models: published sizes, registration, builder errors, layer placement, optimizer
groups and runtime paths. The per-model contract (forward, backward, features, bf16, compile) is test_contract.py."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from torch.utils.flop_counter import FlopCounterMode

from mixerzoo.mixers import create_mixer
from mixerzoo.models import MetaFormer
from mixerzoo.models.registry import BLOCKS
from tests.conftest import ZOO_TIMM_NAMES, build_model, num_params
from tests.published import PUBLISHED, TIMM_OWNED


def tiny(**kwargs) -> MetaFormer:
    """A small 4-stage model with every baseline mixer, for the runtime-path tests."""
    options = dict(
        depths=(1, 1, 2, 1),
        dims=(16, 24, 32, 48),
        mixer=["pooling", "sepconv", "attention", {"name": "attention", "head_dim": 16}],
        num_classes=7,
    )
    return MetaFormer(**{**options, **kwargs})


def _matches_published(measured: float, published: float, rel: float) -> bool:
    """Within ``rel`` of the published figure, or equal to it at the precision it was published with."""
    decimals = len(repr(float(published)).split(".")[1].rstrip("0")) if float(published) % 1 else 0
    return abs(measured - published) <= rel * published or round(measured, decimals) == published


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_the_papers(name: str) -> None:
    with torch.device("meta"):
        model = build_model(name)
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    published = PUBLISHED[name]
    params = num_params(model) / 1e6
    macs = counter.get_total_flops() / 2e9
    assert _matches_published(params, published["params"], 0.01), f"{name}: {params:.3f} M params vs {published}"
    assert abs(macs - published["macs"]) <= 0.05 * published["macs"], f"{name}: {macs:.3f} GMACs vs {published}"
    frozen = sum(b.numel() for b in model.buffers()) / 1e6
    assert _matches_published(frozen, published.get("frozen", 0.0), 0.01), f"{name}: {frozen:.3f} M frozen"


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_OWNED)
def test_builder_made_timm_architectures_have_timm_parameter_shapes(name: str) -> None:
    with torch.device("meta"):
        zoo, ref = build_model(name), timm.create_model(name)
    assert num_params(zoo) == num_params(ref)


@pytest.mark.slow
def test_importing_the_zoo_shadows_no_timm_model() -> None:
    code = (
        "import warnings, timm\n"
        "before = set(timm.list_models())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import mixerzoo\n"
        "zoo = set(timm.list_models()) - before\n"
        "overwrites = [str(w.message) for w in caught if 'Overwriting' in str(w.message)]\n"
        "assert not overwrites, overwrites\n"
        "print(sorted(zoo))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    registered = set(eval(out))
    assert registered == set(ZOO_TIMM_NAMES)


@pytest.mark.parametrize("old", ["models", "mixers", "training"])
def test_the_folders_import_only_as_mixerzoo_subpackages(old: str, tmp_path) -> None:
    """The install puts one top-level package on the path; from the repository root, where the folders are visible,
    the old top-level import fails with a message naming the new path."""
    outside = subprocess.run([sys.executable, "-c", f"import {old}"], cwd=tmp_path, capture_output=True, text=True)
    assert outside.returncode != 0 and f"No module named '{old}'" in outside.stderr
    root = Path(__file__).resolve().parents[2]
    inside = subprocess.run([sys.executable, "-c", f"import {old}"], cwd=root, capture_output=True, text=True)
    assert inside.returncode != 0 and f"use `import mixerzoo.{old}`" in inside.stderr


def test_mlp_head_pre_logits_and_reset() -> None:
    model = tiny(head="mlp", num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 5)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 48)
    assert model.get_classifier().fc2.out_features == 5
    model.reset_classifier(11)
    assert model(x).shape == (2, 11)
    model.reset_classifier(0, "")
    assert model(x).shape == (2, 48, 1, 1)


def test_randformer_rejects_another_image_size_and_builds_for_its_own() -> None:
    model = timm.create_model("randformer_s12")
    with pytest.raises(ValueError, match=r"built for a 14x14 token grid \(the grid of a 224x224 input\), got 16x16"):
        model(torch.randn(1, 3, 256, 256))
    at_256 = timm.create_model("randformer_s12", img_size=256)
    assert at_256(torch.randn(1, 3, 256, 256)).shape == (1, 1000)


def test_builder_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"mixer: expected one value or 4 \(one per stage\), got 3"):
        MetaFormer(mixer=["pooling"] * 3)
    with pytest.raises(ValueError, match="Unknown norm 'instancenorm'; known: batchnorm, groupnorm1, layernorm"):
        MetaFormer(block={"name": "metaformer", "norm": "instancenorm"})
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        MetaFormer(block={"name": "metaformer", "mlp": {"name": "mlp", "act": "swish"}})
    with pytest.raises(TypeError, match=r"block 'metaformer' got unknown option\(s\) \['norm_layer'\]"):
        MetaFormer(block={"name": "metaformer", "norm_layer": "layernorm"})
    with pytest.raises(ValueError, match=r"block.res_scale_init: expected one value or 4 \(one per stage\), got 2"):
        MetaFormer(block={"name": "metaformer", "res_scale_init": [None, 1.0]})
    with pytest.raises(ValueError, match=r"Unknown block 'convnext'\. Registered: aff, inverted_residual, metaformer"):
        MetaFormer(block="convnext")
    with pytest.raises(ValueError, match="stage 0 follows the stem"):
        MetaFormer(downsample=["conv"] * 4)
    with pytest.raises(ValueError, match="from 64 to 128 channels: give the stage a downsample spec"):
        MetaFormer(downsample=None)
    with pytest.raises(ValueError, match="Unknown token mixer 'conv'"):
        MetaFormer(mixer="conv")
    with pytest.raises(ValueError, match="Unknown global_pool 'avgmax'"):
        MetaFormer(global_pool="avgmax")
    with pytest.raises(ValueError, match="one entry per stage"):
        MetaFormer(depths=(1, 1), dims=(8, 16, 32))


def test_drop_path_grows_linearly_over_all_blocks() -> None:
    model = tiny(drop_path_rate=0.3)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 5))


def test_layer_scale_and_res_scale_placement() -> None:
    v1 = build_model("poolformer_s36")
    block = v1.stages[2].blocks[0]
    assert torch.all(block.layer_scale1.scale == 1e-6) and isinstance(block.res_scale1, nn.Identity)
    v2 = build_model("poolformerv2_s12")
    assert isinstance(v2.stages[1].blocks[0].res_scale1, nn.Identity)
    assert torch.all(v2.stages[2].blocks[0].res_scale2.scale == 1.0)
    assert isinstance(v2.stages[2].blocks[0].layer_scale1, nn.Identity)


def test_family_layouts_follow_the_official_code() -> None:
    v1 = build_model("poolformer_s12")
    assert isinstance(v1.stem.norm, nn.Identity) and v1.stages[0].blocks[0].norm1.eps == 1e-5
    assert v1.stages[0].blocks[0].norm1.bias is not None and v1.stages[0].blocks[0].mlp.fc1.bias is not None
    assert isinstance(v1.stages[0].blocks[0].mlp.act, nn.GELU) and v1.head.norm_before_pool
    ca = build_model("caformer_s18")
    block = ca.stages[3].blocks[0]
    assert type(block.norm1).__name__ == "LayerNorm" and block.norm1.bias is None and block.norm1.eps == 1e-6
    assert block.mlp.fc1.bias is None and block.token_mixer.num_heads == 16
    assert ca.head.fc.norm.eps == 1e-5  # the official MlpHead LayerNorm (timm uses 1e-6)


def test_channels_last_input_gives_the_same_output() -> None:
    model = tiny().eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_blocks_run_on_channels_last_memory_after_plain_conv_downsampling() -> None:
    """Convs without a norm (Strip-MLP's, Hydra-ViT's) return NCHW memory; the stage makes it channels-last once, so
    no block norm copies it and no residual add mixes layouts."""
    conv = {"name": "conv", "kernel_size": 2, "stride": 2, "padding": 0, "norm": None}
    model = tiny(stem={**conv, "kernel_size": 4, "stride": 4}, downsample=[None, conv, conv, conv]).eval()
    seen = []
    for stage in model.stages:
        for block in stage.blocks:
            block.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen == [True] * 5


def test_conv_norm_act_activates_in_place_with_the_same_values_and_gradients() -> None:
    from mixerzoo.layers import create_act
    from mixerzoo.models.blocks import ConvNormAct

    layer = ConvNormAct(4, 6, 3, act="silu").double()
    assert layer.act.inplace and not create_act("silu").inplace
    assert isinstance(create_act("gelu", inplace=True), nn.GELU)  # no in-place form: the plain module
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    params = [x, *layer.parameters()]
    out = layer(x)
    expected = torch.nn.functional.silu(layer.norm(layer.conv(x)))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(expected, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_layer_decay_param_groups_use_group_matcher() -> None:
    model = tiny()
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g["lr_scale"] for g in optimizer.param_groups})
    assert len(scales) == 7  # stem, 5 blocks, then head/rest
    no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert all(p.ndim <= 1 for p in no_decay)


def test_no_weight_decay_collects_names_declared_by_submodules() -> None:
    model = tiny()
    assert model.no_weight_decay() == set()
    model.stages[0].blocks[0].token_mixer.no_weight_decay = lambda: {"A_log"}
    assert model.no_weight_decay() == {"stages.0.blocks.0.token_mixer.A_log"}


@pytest.mark.parametrize("bias", [True, False])
def test_groupnorm1_equals_torch_groupnorm_with_one_group(bias: bool) -> None:
    from mixerzoo.layers import GroupNorm1

    norm = GroupNorm1(6, eps=1e-5, bias=bias)
    with torch.no_grad():
        norm.weight.normal_()
        if bias:
            norm.bias.normal_()
    reference = nn.GroupNorm(1, 6, eps=1e-5, affine=True)
    reference.load_state_dict({"weight": norm.weight, "bias": norm.bias if bias else torch.zeros(6)})
    x = torch.randn(2, 6, 5, 7)  # NCHW for the reference, the zoo norm sees (B, H, W, C)
    torch.testing.assert_close(norm(x.permute(0, 2, 3, 1)), reference(x).permute(0, 2, 3, 1))
    pooled = torch.randn(3, 6)
    torch.testing.assert_close(norm(pooled), reference(pooled[:, :, None, None])[:, :, 0, 0])


def test_a_new_family_needs_no_builder_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """A toy family with a block of its own: register the block, name it in the specs, build; the builder's code and
    signature stay as they are (at most 15 parameters)."""

    class GatedBlock(nn.Module):
        def __init__(self, dim: int, mixer: str, grid: tuple[int, int], drop_path: float = 0.0) -> None:
            super().__init__()
            self.token_mixer = create_mixer(mixer, dim, context={"grid": grid})
            self.gate = nn.Linear(dim, dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.sigmoid(self.gate(x)) * self.token_mixer(x)

    monkeypatch.setitem(BLOCKS._entries, "toy_gated", GatedBlock)
    model = MetaFormer(depths=(1, 2), dims=(8, 16), mixer=["pooling", "random"], block="toy_gated", img_size=64)
    assert [type(b).__name__ for s in model.stages for b in s.blocks] == ["GatedBlock"] * 3
    assert model.stages[1].blocks[1].token_mixer.grid == (8, 8)  # the stage grid reached the block's mixer
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)
    options = set(inspect.signature(MetaFormer).parameters) - {"device", "dtype"}  # timm's factory arguments
    assert len(options) <= 15
