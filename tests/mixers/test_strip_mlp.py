"""The strip_mlp mixer (mixers/strip_mlp.py) and the Strip-MLP family (models/stripmlp_family.py): the strip MLP
layer against one explicit einsum, CGSMM/LSMM against their equations, the grid rules and ``resize``, the builder
options Strip-MLP uses (ConvNeXt-V2 channel block, cross-stage shortcuts, constant drop path), published sizes,
the official checkpoint layout and ``features_only``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mixerzoo
from mixerzoo.mixers import create_mixer
from mixerzoo.mixers.strip_mlp import CGSMM, LSMM, StripMLP, StripMLPLayer, num_strip_patches
from mixerzoo.models import MetaFormer
from mixerzoo.models.stripmlp_family import LAYOUT
from tests.conftest import build_model, num_params

# Official README (top-1) and the exact counts of shared/specs/aff_stripmlp.md B5 (params; fvcore GMACs at 224).
STRIPMLP_PUBLISHED = {
    "stripmlp_t_light": dict(params=18.24, macs=2.53, top1=81.2),
    "stripmlp_t": dict(params=24.90, macs=3.66, top1=82.2),
    "stripmlp_s": dict(params=42.57, macs=6.83, top1=83.3),
    "stripmlp_b": dict(params=57.22, macs=9.21, top1=83.6),
}
GRIDS = [(7, 7), (5, 9), (6, 4), (1, 3)]


def small_stripmlp(**kwargs) -> MetaFormer:
    """The Strip-MLP layout at small widths and depths (fast tests)."""
    return MetaFormer(**{**LAYOUT, "depths": (1, 1, 2, 1), "dims": (8, 16, 32, 64), "num_classes": 5, **kwargs})


def _reference_strip(layer: StripMLPLayer, x: torch.Tensor) -> torch.Tensor:
    """The strip MLP layer as one einsum over (patch p, channel-in-patch g, row h, tap t, column w):

    row:    Y[h, v, p, g] = b[g, v] + sum_{t, w} A[g, v, w, t] X[h + t - 1, w, p, g]
    column: Y[v, w, p, g] = b[g, v] + sum_{t, h} A[g, v, h, t] X[h, w + t - 1, p, g]

    with A[g, out, in, t] = weight[g L + out, in, 0, t] (the official grouped-conv layout), zero padding."""
    B, H, W, C = x.shape
    P, G, L = layer.num_patches, C // layer.num_patches, layer.length
    A = layer.weight[:, :, 0, :].reshape(G, L, L, 3)
    bias = layer.bias.reshape(G, L)
    xs = x.reshape(B, H, W, P, G)
    if layer.axis == "row":
        padded = F.pad(xs, (0, 0, 0, 0, 0, 0, 1, 1))  # (B, H + 2, W, P, G)
        taps = torch.stack([padded[:, t : t + H] for t in range(3)], dim=2)  # (B, H, 3, W, P, G)
        y = torch.einsum("gvwt,bhtwpg->bhvpg", A, taps) + bias.t()[None, None, :, None, :]
    else:
        padded = F.pad(xs, (0, 0, 0, 0, 1, 1))  # (B, H, W + 2, P, G)
        taps = torch.stack([padded[:, :, t : t + W] for t in range(3)], dim=3)  # (B, H, W, 3, P, G)
        y = torch.einsum("gvht,bhwtpg->bvwpg", A, taps) + bias.t()[None, :, None, None, :]
    return y.reshape(B, H, W, C)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("axis", ["row", "column"])
@pytest.mark.parametrize("num_patches", [2, 4])
def test_strip_mlp_layer_equals_one_explicit_einsum(grid: tuple[int, int], axis: str, num_patches: int) -> None:
    H, W = grid
    layer = StripMLPLayer(24, W if axis == "row" else H, num_patches, axis).double()
    x = torch.randn(2, H, W, 24, dtype=torch.float64)
    assert (layer(x) - _reference_strip(layer, x)).abs().max() < 1e-12


def test_strip_mlp_layer_mixes_rows_with_three_taps_and_shares_weights_across_patches() -> None:
    layer = StripMLPLayer(8, 6, 2, "row").double()
    x = torch.zeros(1, 5, 6, 8, dtype=torch.float64)
    x[0, 2, 3, 1] = 1.0  # one token, patch 0, channel-in-patch 1
    x[0, 2, 3, 5] = 1.0  # same token, patch 1, channel-in-patch 1
    y = layer(x) - layer(torch.zeros_like(x))  # without the bias
    assert y[0, [0, 4]].abs().max() == 0  # rows 1-3 only (taps over adjacent rows)
    assert y[0, 1:4, :, [1, 5]].abs().min() > 0  # every column of those rows
    torch.testing.assert_close(y[..., 1], y[..., 5], rtol=0, atol=0)  # shared across the channel patches
    assert y[..., [0, 2, 3, 4, 6, 7]].abs().max() == 0  # no channel mixing
    assert num_params(layer) == 3 * 4 * 6**2 + 4 * 6  # 3 G L^2 + G L


def test_patch_count_follows_the_official_rule() -> None:
    assert [num_strip_patches(c) for c in (80, 160, 320, 640, 96, 192, 112, 896)] == [2, 2, 2, 2, 4, 4, 4, 4]
    with torch.device("meta"):
        model = timm.create_model("stripmlp_s", num_classes=0)
    assert [s.blocks[0].token_mixer.cgsmm.proj_h.group_dim for s in model.stages] == [12, 24, 48, 96]
    with pytest.raises(ValueError, match="not divisible by num_patches"):
        create_mixer("strip_mlp", 36, grid=(4, 4))


def _eval_bn(norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias


def _perturb(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module.eval()


def _positions(table: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Pos[i, j] = T[clip(j - i, +-M) + M], written with loops."""
    M = (table.shape[0] - 1) // 2
    return torch.stack(
        [torch.stack([table[min(max(j - i, -M), M) + M] for j in range(W)]) for i in range(H)]
    )  # (H, W, C)


@pytest.mark.parametrize("grid", [(6, 6), (4, 7)], ids=str)
def test_cgsmm_follows_its_equations(grid: tuple[int, int]) -> None:
    H, W = grid
    module = _perturb(CGSMM(16, grid, num_patches=2).double())
    x = torch.randn(2, H, W, 16, dtype=torch.float64)
    with torch.no_grad():
        r = _reference_strip(module.proj_h, x + _positions(module.pos_h.table, H, W))
        z = F.gelu(_eval_bn(module.norm, torch.cat([r, x], -1) @ module.fuse_h.weight.t()))
        u = _reference_strip(module.proj_w, z + _positions(module.pos_w.table, H, W))
        expected = torch.cat([x, u], -1) @ module.fuse_w.weight.t()
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


def test_lsmm_follows_its_equations() -> None:
    module = _perturb(LSMM(12).double())
    x = torch.randn(2, 5, 9, 12, dtype=torch.float64)
    with torch.no_grad():
        xc = x.permute(0, 3, 1, 2)
        a = F.conv2d(xc, module.fc_h.weight, padding=(1, 3), groups=12)  # 3x7
        b = F.conv2d(xc, module.fc_w.weight, padding=(3, 1), groups=12)  # 7x3
        s = (a + b + xc).mean(dim=(2, 3))
        logits = module.reweight.fc2(F.gelu(module.reweight.fc1(s))).reshape(2, 12, 3)
        w = logits.softmax(dim=-1)[:, :, :, None, None]
        expected = (w[:, :, 0] * b + w[:, :, 1] * a + w[:, :, 2] * xc).permute(0, 2, 3, 1)
        torch.testing.assert_close(module(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("module", ["cgsmm", "lsmm"])
def test_cgsmm_and_lsmm_keep_shapes_and_pass_gradients_to_every_weight(module: str) -> None:
    layer = CGSMM(32, (6, 5), num_patches=4) if module == "cgsmm" else LSMM(32)
    x = torch.randn(2, 6, 5, 32, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_strip_mixing_block_follows_its_equation() -> None:
    mixer = _perturb(create_mixer("strip_mlp", 32, grid=(5, 6)).double())
    x = torch.randn(2, 5, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        h = F.gelu(_eval_bn(mixer.dwsc_norm, x)).permute(0, 3, 1, 2)
        h = F.conv2d(h, mixer.dwsc_conv.weight, padding=1, groups=32).permute(0, 2, 3, 1)
        h = F.gelu(_eval_bn(mixer.proj_norm, h @ mixer.proj.weight.t() + mixer.proj.bias))
        h = torch.cat([mixer.cgsmm(h[..., :16]), mixer.lsmm(h[..., 16:])], -1) @ mixer.fuse.weight.t()
        torch.testing.assert_close(mixer(x), h, rtol=1e-10, atol=1e-10)


def test_strip_mlp_rejects_another_grid_and_names_the_size_it_was_built_for() -> None:
    mixer = create_mixer("strip_mlp", 64, grid=(14, 14), img_size=(224, 224))
    with pytest.raises(ValueError, match=r"built for a 14x14 token grid \(the grid of a 224x224 input\), got 16x16"):
        mixer(torch.randn(1, 16, 16, 64))
    model = small_stripmlp().eval()
    with pytest.raises(ValueError, match=r"56x56 token grid \(the grid of a 224x224 input\), got 64x64"):
        model(torch.randn(1, 3, 256, 256))


def test_non_square_grids_mix_rows_w_by_w_and_columns_h_by_h() -> None:
    mixer = create_mixer("strip_mlp", 32, grid=(4, 7))
    assert mixer.cgsmm.proj_h.weight.shape == (4 * 7, 7, 1, 3) and mixer.cgsmm.proj_w.weight.shape == (4 * 4, 4, 1, 3)
    assert mixer(torch.randn(2, 4, 7, 32)).shape == (2, 4, 7, 32)
    model = small_stripmlp(img_size=(224, 160)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 160)).shape == (1, 5)
    assert model.stages[3].blocks[0].token_mixer.grid == (7, 5)


def test_resize_equals_the_original_at_its_grid_and_runs_at_others() -> None:
    plain = _perturb(create_mixer("strip_mlp", 32, grid=(6, 6)))
    resized = create_mixer({"name": "strip_mlp", "resize": True}, 32, grid=(6, 6)).eval()
    resized.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6, 6, 32)
    torch.testing.assert_close(resized(x), plain(x), rtol=0, atol=0)
    for grid in [(9, 9), (4, 8)]:
        out = resized(torch.randn(2, *grid, 32, requires_grad=True))
        assert out.shape == (2, *grid, 32)
        out.square().sum().backward()
        assert resized.cgsmm.proj_h.weight.grad.abs().sum() > 0  # fine-tunable: gradients reach the stored weights


def test_resize_keeps_an_averaging_strip_averaging() -> None:
    layer = StripMLPLayer(4, 6, 2, "row", resize=True).double()
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, :, 0, 1] = 1 / 6  # middle tap: the row mean
        layer.bias.zero_()
    x = torch.randn(1, 3, 10, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x.mean(dim=2, keepdim=True).expand_as(x))


def test_resized_small_model_equals_the_original_at_its_size_and_runs_at_others() -> None:
    original = _perturb(small_stripmlp(img_size=96))
    resized = small_stripmlp(img_size=96, mixer={"name": "strip_mlp", "resize": True})
    resized.load_state_dict(original.state_dict())
    resized.eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(resized(x), original(x), rtol=0, atol=0)
        assert resized(torch.randn(2, 3, 128, 64)).shape == (2, 5)


@pytest.mark.slow
def test_resized_model_equals_the_original_at_224_and_runs_at_256() -> None:
    torch.manual_seed(1)
    original = timm.create_model("stripmlp_t_light", num_classes=10).eval()
    resized = timm.create_model("stripmlp_t_light", num_classes=10, mixer={"name": "strip_mlp", "resize": True})
    resized.load_state_dict(original.state_dict())
    resized.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(resized(x), original(x), rtol=0, atol=0)
        assert torch.isfinite(resized(torch.randn(1, 3, 256, 192))).all()


def test_convnext_grn_channel_block_equals_the_official_formula() -> None:
    model = MetaFormer(**{**LAYOUT, "depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128), "img_size": 64})
    mlp = _perturb(model.stages[1].blocks[0].mlp.double())
    x = torch.randn(2, 8, 8, 32, dtype=torch.float64)
    with torch.no_grad():
        h = F.conv2d(x.permute(0, 3, 1, 2), mlp.conv.weight, padding=3, groups=32).permute(0, 2, 3, 1)
        h = F.gelu(mlp.fc1(F.layer_norm(h, (32,), mlp.norm.weight, mlp.norm.bias, 1e-5)))
        gx = torch.norm(h, p=2, dim=(1, 2), keepdim=True)
        h = mlp.grn.gamma * (h * gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)) + mlp.grn.beta + h
        torch.testing.assert_close(mlp(x), mlp.fc2(h), rtol=1e-10, atol=1e-10)
    assert mlp.conv.bias is None and mlp.fc1.out_features == 96  # no dw bias, MLP ratio 3


def test_grn_equals_the_official_formula_with_finite_gradients_for_an_all_zero_channel() -> None:
    from mixerzoo.models.layers import GRN

    grn = GRN(6).double()
    with torch.no_grad():
        grn.gamma.normal_(), grn.beta.normal_()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    x[0, :, :, 2] = 0  # one (image, channel) plane of zeros: its norm is 0
    x.requires_grad_(True)
    gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
    expected = grn.gamma * (x * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6))) + grn.beta + x
    out = grn(x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got, want = torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(expected, x, grad)[0]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_cross_stage_shortcuts_follow_the_official_forward() -> None:
    model = _perturb(small_stripmlp(img_size=64).double())
    chains, stages = model.cross_shortcuts.chains, model.stages
    assert [c.groups for c in chains["1"]] + [chains["2"][0].groups] == [16, 32, 32]
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        s0 = stages[0].forward_blocks(model.stem(x))
        x1 = stages[1].downsample(s0)  # merging1
        s1_14 = chains["1"][0](x1)  # conv_s1_28
        s1_7 = chains["1"][1](s1_14)  # conv_s1_14
        x2 = stages[2].downsample(stages[1].forward_blocks(x1))  # merging2
        s2_7 = chains["2"][0](x2)  # conv_s2_14
        x3 = stages[3].downsample(stages[2].forward_blocks(x2 + s1_14))  # merging3
        expected = stages[3].forward_blocks(x3 + s1_7 + s2_7)
        torch.testing.assert_close(model.forward_features(x), expected, rtol=1e-10, atol=1e-10)
        _, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(intermediates[-1], expected, rtol=1e-10, atol=1e-10)


def test_drop_path_is_constant_over_the_blocks() -> None:
    with torch.device("meta"):
        model = timm.create_model("stripmlp_t_light", drop_path_rate=0.1)
    rates = [b.drop_path1.drop_prob for s in model.stages for b in s.blocks]
    assert rates == [0.1] * 12


def measure(name: str) -> dict[str, float]:
    """Params (M) and MACs at 224 (G) as FlopCounterMode counts them (convs, linears, matmuls)."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    return dict(params=num_params(model) / 1e6, macs=counter.get_total_flops() / 2e9)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STRIPMLP_PUBLISHED))
def test_stripmlp_params_and_macs_match_the_published_counts(name: str) -> None:
    published, measured = STRIPMLP_PUBLISHED[name], measure(name)
    assert abs(measured["params"] - published["params"]) <= 0.001 * published["params"], measured
    # fvcore's count also includes norm ops; conv/linear alone are 0.3-0.5% lower
    assert abs(measured["macs"] - published["macs"]) <= 0.01 * published["macs"], measured


def test_pretrained_cfg_is_fixed_size_224() -> None:
    with torch.device("meta"):
        cfg = timm.create_model("stripmlp_t", pretrained=False).pretrained_cfg
    assert cfg["fixed_input_size"] and cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875


_MIXER = {
    "dwsc_norm": "dwsc.conv_merge.BN",
    "dwsc_conv": "dwsc.conv_merge.Conv",
    "proj": "smlp_block.mlp.0",
    "proj_norm": "smlp_block.mlp.1",
    "cgsmm.norm": "smlp_block.BN",
    "cgsmm.pos_h": "smlp_block.relate_pos_h",
    "cgsmm.pos_w": "smlp_block.relate_pos_w",
}
_CHANNEL = {"conv": "conv_77", "norm": "layer_norm"}
_SHORTCUT = {"1.0": "conv_s1_28", "1.1": "conv_s1_14", "2.0": "conv_s2_14"}


def _official_stripmlp_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) zoo keys to Med-Process/Strip_MLP ``StripMLPNet``'s (written from that code's module
    names: ``patch_embed``, ``blocks1..4.<j>.token_mixing.{dwsc.conv_merge.BN|Conv, smlp_block.*}``,
    ``.channel_mixing.{conv_77, layer_norm, fc1, fc2, grn}``, ``merging1..3``, ``conv_s*``, ``norm``, ``head``);
    its 1x1 convs get 4-d weights and GRN (1, 1, 1, C) parameters."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"^stem\.conv\.", "patch_embed.", key)
        key = re.sub(r"^stages\.(\d)\.downsample\.conv\.", r"merging\1.", key)
        key = re.sub(r"^cross_shortcuts\.chains\.(\d\.\d)\.", lambda m: f"{_SHORTCUT[m[1]]}.", key)
        key = re.sub(r"^head\.norm\.", "norm.", key)
        key = re.sub(r"^head\.fc\.", "head.", key)
        if m := re.match(r"^stages\.(\d)\.blocks\.(\d+)\.", key):
            block, rest = f"blocks{int(m[1]) + 1}.{m[2]}", key[m.end() :]
            if rest.startswith("token_mixer."):
                rest = rest[len("token_mixer.") :]
                module, leaf = rest.rsplit(".", 1)
                # cgsmm.proj_h -> smlp_block.proj_h, lsmm.reweight.fc1 -> smlp_block.reweight.fc1, fuse -> ...
                official_module = "smlp_block." + re.sub(r"^(cgsmm|lsmm)\.", "", module)
                module = _MIXER.get(module, official_module)
                leaf = "embeddings_table" if leaf == "table" else leaf
                rest = f"token_mixing.{module}.{leaf}"
                if value.ndim == 2 and leaf == "weight":  # 1x1 convs in the official block
                    value = value[:, :, None, None]
            else:
                module, leaf = rest[len("mlp.") :].split(".", 1)
                rest = f"channel_mixing.{_CHANNEL.get(module, module)}.{leaf}"
                if module == "grn":
                    value = value.reshape(1, 1, 1, -1)
            key = f"{block}.{rest}"
        out[key] = value
    return out


def test_official_stripmlp_checkpoint_loads() -> None:
    torch.manual_seed(1)
    source = timm.create_model("stripmlp_t_light")
    official = _official_stripmlp_keys(source.state_dict())
    expected_keys = [
        "blocks3.5.token_mixing.smlp_block.proj_h.weight",
        "blocks1.0.token_mixing.smlp_block.relate_pos_w.embeddings_table",
        "blocks2.1.token_mixing.dwsc.conv_merge.BN.running_var",
        "blocks4.1.token_mixing.smlp_block.reweight.fc2.bias",
        "blocks1.1.channel_mixing.grn.gamma",
        "conv_s1_14.weight",
        "merging3.weight",
        "norm.num_batches_tracked",
        "head.weight",
    ]
    assert all(k in official for k in expected_keys)
    assert not any(k.startswith(("stem.", "stages.", "cross_shortcuts.")) for k in official)
    assert official["blocks1.0.token_mixing.smlp_block.fuse_h.weight"].shape == (40, 80, 1, 1)
    torch.manual_seed(2)
    target = timm.create_model("stripmlp_t_light")
    assert mixerzoo.load_checkpoint(target, {"model": official}) == "official Strip-MLP (Med-Process/Strip_MLP)"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.slow
def test_pretrained_cfg_overlay_file_loads_an_official_stripmlp_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("stripmlp_t_light").eval()
    path = tmp_path / "smlp_tiny_light.pth"
    torch.save({"model": _official_stripmlp_keys(source.state_dict())}, path)
    loaded = timm.create_model("stripmlp_t_light", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), source(x), rtol=0, atol=0)


def test_stripmlp_features_only_gives_four_maps_at_strides_4_to_32() -> None:
    with torch.device("meta"):  # shapes only
        model = timm.create_model("stripmlp_t_light", features_only=True).eval()
        maps = model(torch.empty(1, 3, 224, 224))
        subset = timm.create_model("stripmlp_t_light", features_only=True, out_indices=(1, 3)).eval()
        assert [m.shape[1] for m in subset(torch.empty(1, 3, 224, 224))] == [160, 640]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(m.shape[1:]) for m in maps] == [(80, 56, 56), (160, 28, 28), (320, 14, 14), (640, 7, 7)]
    small = timm.create_model("stripmlp_t_light", features_only=True, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    with torch.no_grad():
        assert [m.shape[-1] for m in small.eval()(torch.randn(1, 3, 224, 224))] == [56, 28, 14, 7]


def test_strip_mlp_in_the_comparison_backbone() -> None:
    model = build_model("strip_mlp_metaformer_s12", num_classes=10).eval()
    mixers = [b.token_mixer for s in model.stages for b in s.blocks]
    assert all(isinstance(m, StripMLP) for m in mixers)
    assert [m.grid for m in mixers[::2]][:2] == [(56, 56), (28, 28)] and mixers[-1].grid == (7, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
