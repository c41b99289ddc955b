"""The AFF filter (mixers/aff.py) and the AFFNet family (models/affnet_family.py): the filter against an
independent circular-convolution formulation, precision behaviour, published sizes, the
builder's AFFNet blocks against the official formulas, and the official checkpoint layout."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mixerzoo
from mixerzoo.layers import GroupNorm1
from mixerzoo.mixers import create_mixer
from mixerzoo.mixers.aff import AFF
from mixerzoo.models import MetaFormer
from mixerzoo.models.affnet_family import DEPTHS
from tests.conftest import build_model, num_params

# Official README (top-1 at 256; params and FLOPs published rounded: 1.4/2.6/5.5 M, 0.4/0.8/1.5 G) and the exact
# counts of shared/specs/aff_stripmlp.md A3 (params; MACs at 256 as fvcore counts them: conv/linear/einsum plus
# norm ops; FFT add-on by the authors' formula 5 N floor(ln N) C per filter).
AFFNET_PUBLISHED = {
    "affnet_et": dict(params=1.436, macs=0.375, fft_macs=0.007, top1=73.0),
    "affnet_t": dict(params=2.654, macs=0.818, fft_macs=0.011, top1=77.0),
    "affnet": dict(params=5.569, macs=1.493, fft_macs=0.016, top1=79.8),
}
GRIDS = [(8, 8), (7, 7), (5, 9), (6, 4), (1, 3)]


def _perturbed_aff(dim: int, **options) -> AFF:
    """A float64 AFF filter with weights large enough that the mask is far from zero and partly shrunk."""
    mixer = create_mixer({"name": "aff", **options}, dim).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0.0, 0.5)
    return mixer


def _reference_mask(mixer: AFF, spectrum: torch.Tensor) -> torch.Tensor:
    """The mask in complex arithmetic, as the paper writes it: two complex group-linear layers (weights
    ``w[0] + i w[1]``), the activation on real and imaginary parts separately, softshrink on both parts."""
    B, H, Wf, C = spectrum.shape
    G, b = mixer.num_groups, C // mixer.num_groups
    x = spectrum.reshape(B, H, Wf, G, b)
    w1, b1 = torch.complex(mixer.w1[0], mixer.w1[1]), torch.complex(mixer.b1[0], mixer.b1[1])
    w2, b2 = torch.complex(mixer.w2[0], mixer.w2[1]), torch.complex(mixer.b2[0], mixer.b2[1])
    h = torch.einsum("bhwgi,gio->bhwgo", x, w1) + b1
    h = torch.complex(F.silu(h.real), F.silu(h.imag))
    o = torch.einsum("bhwgi,gio->bhwgo", h, w2) + b2
    shrink = mixer.sparsity_threshold
    return torch.complex(F.softshrink(o.real, shrink), F.softshrink(o.imag, shrink)).reshape(B, H, Wf, C)


def _circular_convolution_reference(mixer: AFF, u: torch.Tensor) -> torch.Tensor:
    """mask -> full-size spatial kernel k = irfft2(mask) (the ortho normalisations of the filter's two transforms
    combine to the unnormalised pair) -> per-channel circular convolution y[n] = sum_d k[d] u[n - d]."""
    H, W = u.shape[1:3]
    mask = _reference_mask(mixer, torch.fft.rfft2(u, dim=(1, 2), norm="ortho"))
    kernel = torch.fft.irfft2(mask, s=(H, W), dim=(1, 2))  # (B, H, W, C), one kernel per sample and channel
    y = torch.zeros_like(u)
    for dh in range(H):
        for dw in range(W):
            y += kernel[:, dh : dh + 1, dw : dw + 1, :] * torch.roll(u, shifts=(dh, dw), dims=(1, 2))
    return y + u if mixer.inner_skip else y


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("inner_skip", [False, True])
def test_aff_equals_circular_convolution(grid: tuple[int, int], inner_skip: bool) -> None:
    mixer = _perturbed_aff(16, inner_skip=inner_skip, sparsity_threshold=0.5)
    u = torch.randn(2, *grid, 16, dtype=torch.float64)
    expected = _circular_convolution_reference(mixer, u)
    assert (mixer(u) - expected).abs().max() < 1e-10
    mask = mixer.mask(torch.fft.rfft2(u, dim=(1, 2), norm="ortho"))
    zeros = (torch.view_as_real(mask) == 0).double().mean()
    assert 0.05 < zeros < 0.95  # the softshrink is active: a real test of the mask
    # float32 (the filter's own precision): within float32 rounding of the float64 reference
    out32 = mixer.float()(u.float())
    assert (out32.double() - expected).abs().max() < 1e-4 * expected.abs().max()


def test_aff_filter_parameters_follow_the_official_shapes_and_count() -> None:
    mixer = create_mixer("aff", 64)
    shapes = {name: tuple(p.shape) for name, p in mixer.named_parameters()}
    assert shapes == {"w1": (2, 8, 8, 8), "b1": (2, 8, 8), "w2": (2, 8, 8, 8), "b2": (2, 8, 8)}
    assert num_params(mixer) == 64**2 // 2 + 4 * 64
    x = torch.randn(2, 32, 32, 64)
    relative = ((create_mixer({"name": "aff", "inner_skip": True}, 64)(x) - x).norm() / x.norm()).item()
    assert relative < 0.05  # with its inner skip the official filter starts close to the identity


def test_aff_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match=r"dim \(36\) must be divisible by num_groups \(8\)"):
        create_mixer("aff", 36)
    with pytest.raises(ValueError, match="must have no parameters"):
        create_mixer({"name": "aff", "act": "starrelu"}, 16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_aff_keeps_shape_and_dtype_under_autocast_and_computes_in_float32(dtype: torch.dtype) -> None:
    mixer = create_mixer({"name": "aff", "inner_skip": True}, 32)
    x = torch.randn(2, 7, 5, 32)  # odd sizes: half-precision FFTs would reject them
    with torch.autocast("cpu", dtype=dtype):
        out = mixer(x.to(dtype))
    assert out.shape == x.shape and out.dtype == dtype
    torch.testing.assert_close(out, mixer(x.to(dtype).float()).to(dtype))  # exactly the float32 result, rounded


def test_aff_gradients_reach_every_filter_weight() -> None:
    mixer = create_mixer("aff", 32)
    x = torch.randn(2, 6, 5, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mixer(x)
    out.float().square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name in ("w1", "b1", "w2", "b2"):
        grad = getattr(mixer, name).grad
        assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0, name


def test_aff_block_equals_the_official_block() -> None:
    """AFFNet's block: z = N1(x); z = z + IR(z); t = N2(z); t = t + filter(t); out = x + t (official names)."""
    model = timm.create_model("affnet_et").eval()
    block = model.stages[3].blocks[1]
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 9, 7, 104)
    ir = block.mlp
    with torch.no_grad():
        z = block.norm2(x).permute(0, 3, 1, 2)  # the official norm1: before the MLP
        z = z + ir.conv_pwl(ir.conv_dw(ir.conv_pw(z)))
        t = block.norm1(z.permute(0, 2, 3, 1))  # the official norm2: before the filter
        spectrum = torch.fft.rfft2(t, dim=(1, 2), norm="ortho")
        mask = _reference_mask(block.token_mixer, spectrum)
        t = t + torch.fft.irfft2(mask * spectrum, s=(9, 7), dim=(1, 2), norm="ortho")
        torch.testing.assert_close(block(x), x + t, rtol=1e-4, atol=1e-4)


def test_aff_block_is_one_residual_around_mlp_then_mixer() -> None:
    model = MetaFormer(depths=(1,), dims=(16,), mixer="sepconv", block={"name": "aff", "mlp": "mlp"}).eval()
    block = model.stages[0].blocks[0]
    x = torch.randn(2, 5, 6, 16)
    with torch.no_grad():
        y = block.mlp(block.norm2(x))
        torch.testing.assert_close(block(x), x + block.token_mixer(block.norm1(y)))


def test_stage_fusion_concatenates_the_stage_input() -> None:
    model = timm.create_model("affnet_et").eval()
    stage = model.stages[2]
    x = torch.randn(1, 48, 16, 12)
    with torch.no_grad():
        shortcut = stage.downsample(x)
        y = stage.blocks(shortcut.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = stage.fusion.proj(F.group_norm(y, 1, stage.fusion.norm.weight, stage.fusion.norm.bias, 1e-5))
        y = stage.fusion.fuse(torch.cat([shortcut, y], dim=1))
        torch.testing.assert_close(stage(x), y, rtol=1e-5, atol=1e-5)


def _norm_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Norm ops as fvcore counts them (eval BatchNorm: 2 per element; GroupNorm with affine: 5 per element)."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        total[0] += output.numel() * (5 if isinstance(module, GroupNorm1) else 2)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (GroupNorm1, nn.BatchNorm2d))]
    model(x)
    for handle in handles:
        handle.remove()
    return total[0]


def _fft_macs(model: nn.Module, x: torch.Tensor) -> float:
    """The authors' FFT cost: 5 N floor(ln N) C per filter call, N = H W."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        B, H, W, C = inputs[0].shape
        total[0] += 5 * B * H * W * int(math.log(H * W)) * C

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, AFF)]
    model(x)
    for handle in handles:
        handle.remove()
    return total[0]


def measure(name: str) -> dict[str, float]:
    """Params (M) and MACs at 256 (G): conv/linear/matmul (FlopCounterMode, FFT = 0), fvcore-style norm ops, and
    the authors' FFT formula."""
    with torch.device("meta"):
        model = timm.create_model(name).eval()
        x = torch.empty(1, 3, 256, 256)
        with FlopCounterMode(display=False) as counter:
            model(x)
        norms, fft = _norm_macs(model, x), _fft_macs(model, x)
    core = counter.get_total_flops() / 2e9
    return dict(params=num_params(model) / 1e6, macs=core, norm_macs=norms / 1e9, fft_macs=fft / 1e9)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AFFNET_PUBLISHED))
def test_affnet_params_and_macs_match_the_published_counts(name: str) -> None:
    published, measured = AFFNET_PUBLISHED[name], measure(name)
    assert abs(measured["params"] - published["params"]) <= 0.001 * published["params"], measured
    # the reference counts include the norm ops (fvcore's default); conv/linear/matmul alone are 2.6-5.0% lower
    assert abs(measured["macs"] + measured["norm_macs"] - published["macs"]) <= 0.01 * published["macs"], measured
    assert abs(measured["fft_macs"] - published["fft_macs"]) <= 0.1 * published["fft_macs"], measured


def test_affnet_features_only_gives_five_maps_at_strides_2_to_32() -> None:
    model = timm.create_model("affnet_t", features_only=True)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    maps = model(torch.randn(1, 3, 256, 256))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (32, 128, 128),
        (48, 64, 64),
        (96, 32, 32),
        (160, 16, 16),
        (192, 8, 8),
    ]
    subset = timm.create_model("affnet_t", features_only=True, out_indices=(2, 4))
    assert [m.shape[-1] for m in subset(torch.randn(1, 3, 224, 224))] == [28, 7]


def test_affnet_final_conv_is_capped_at_960_and_heads_reset() -> None:
    assert [timm.create_model(n).num_features for n in ("affnet_et", "affnet_t", "affnet")] == [576, 768, 960]
    model = timm.create_model("affnet", num_classes=0, global_pool="")
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 960, 7, 7)


_IR = {"conv_pw": "exp_1x1", "conv_dw": "conv_3x3", "conv_pwl": "red_1x1"}
_OFFICIAL_BLOCK = {"norm1": "norm2", "norm2": "norm1", "token_mixer": "filter", "mlp": "mlp"}


def _official_affnet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename zoo keys to the module names of microsoft/TokenMixers' ``AffNet`` (written from that code's layout:
    ``conv_1``, ``layer_1..5``, cvnets ``ConvLayer.block.conv|norm``, ``InvertedResidual.block.exp_1x1|conv_3x3|
    red_1x1``, ``AFFBlock.global_rep.<j>.norm1|mlp|norm2|filter`` + final norm ``global_rep.<n>``, ``conv_proj``,
    ``fusion``, ``conv_1x1_exp``, ``classifier.fc``)."""
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r"\.(conv_pw|conv_dw|conv_pwl)\.", lambda m: f".block.{_IR[m[1]]}.block.", key)
        key = re.sub(r"^stem\.", "conv_1.block.", key)
        key = re.sub(r"^final_conv\.", "conv_1x1_exp.block.", key)
        key = re.sub(r"^head\.fc\.", "classifier.fc.", key)
        key = re.sub(r"^stages\.([01])\.blocks\.(\d+)\.", lambda m: f"layer_{int(m[1]) + 1}.{m[2]}.", key)
        if m := re.match(r"^stages\.([234])\.", key):
            layer, rest = f"layer_{int(m[1]) + 1}", key[m.end() :]
            depth = DEPTHS[int(m[1])]  # the final norm follows the blocks in global_rep
            rest = re.sub(r"^downsample\.", "0.", rest)
            rest = re.sub(
                r"^blocks\.(\d+)\.(norm1|norm2|token_mixer|mlp)\.",
                lambda b: f"1.global_rep.{b[1]}.{_OFFICIAL_BLOCK[b[2]]}.",
                rest,
            )
            rest = re.sub(r"^fusion\.norm\.", f"1.global_rep.{depth}.", rest)
            rest = re.sub(r"^fusion\.proj\.", "1.conv_proj.block.", rest)
            rest = re.sub(r"^fusion\.fuse\.", "1.fusion.block.", rest)
            key = f"{layer}.{rest}"
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["affnet_et", "affnet"])
def test_official_affnet_checkpoint_loads(name: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model(name)
    official = _official_affnet_keys(source.state_dict())
    assert "layer_4.1.global_rep.4.weight" in official and "layer_3.1.global_rep.0.filter.w1" in official
    assert "layer_2.2.block.red_1x1.block.norm.running_var" in official and "classifier.fc.weight" in official
    assert not any(k.startswith(("stem.", "stages.", "head.")) for k in official)
    torch.manual_seed(2)
    target = timm.create_model(name)
    assert mixerzoo.load_checkpoint(target, official) == "official AFFNet (microsoft/TokenMixers)"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_pretrained_cfg_overlay_file_loads_an_official_affnet_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = timm.create_model("affnet_et")
    path = tmp_path / "checkpoint_ema_best.pt"
    torch.save(_official_affnet_keys(source.state_dict()), path)
    loaded = timm.create_model("affnet_et", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_aff_in_the_comparison_backbone() -> None:
    model = build_model("aff_metaformer_s12", num_classes=10).eval()
    mixers = [b.token_mixer for s in model.stages for b in s.blocks]
    assert all(isinstance(m, AFF) and not m.inner_skip for m in mixers)
    assert num_params(model) - num_params(build_model("metaformer_s12", num_classes=10)) == sum(
        d**2 // 2 + 4 * d for d, n in zip((64, 128, 320, 512), (2, 2, 6, 2)) for _ in range(n)
    )
    with torch.no_grad():
        assert model(torch.randn(1, 3, 200, 136)).shape == (1, 10)
