"""MambaMixer (mixers/mamba_mixer.py) and ViM2 (models/vim2_family.py): the cross-scan against explicit loops over the
grid, weighted averaging at init against the plain residual network, and the published ViM2 sizes. The S6 scan is
tested in ops/test_selective_scan.py; shapes, gradients and bf16 of every mixer in test_mixers.py; the model contract
in tests/models/test_contract.py."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch

from mixerzoo.mixers import create_channel_mixer, create_mixer
from mixerzoo.mixers.mamba_mixer import MambaChannelMixer, cross_merge, cross_scan
from mixerzoo.mixers.ops.selective_scan import selective_scan_ref
from mixerzoo.models import MetaFormer
from tests.conftest import num_params

GRIDS = [(4, 4), (3, 5), (5, 2), (1, 7), (7, 1)]


# --- cross-scan ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", GRIDS)
def test_each_scan_order_equals_an_explicit_loop_over_the_grid(grid) -> None:
    H, W = grid
    x = torch.randn(2, 3, H, W)
    orders = [
        [(h, w) for h in range(H) for w in range(W)],  # row-major
        [(h, w) for w in range(W) for h in range(H)],  # column-major
    ]
    orders += [order[::-1] for order in orders]
    seqs = cross_scan(x)  # (B, 4, E, L)
    for k, order in enumerate(orders):
        assert len(set(order)) == H * W  # every token once
        expected = torch.stack([x[:, :, h, w] for h, w in order], dim=-1)
        torch.testing.assert_close(seqs[:, k], expected, rtol=0, atol=0)
    # merging is the exact inverse: merging one direction alone gives back the grid
    for k in range(4):
        only_k = torch.zeros_like(seqs)
        only_k[:, k] = seqs[:, k]
        torch.testing.assert_close(cross_merge(only_k, H, W), x, rtol=0, atol=0)


def test_mamba_mixer_is_transpose_equivariant_on_square_grids() -> None:
    """Transposing a square input turns the row scans into column scans: swapping the direction parameters
    (0 <-> 1, 2 <-> 3) of the transposed-input mixer gives the transposed output."""
    mixer = create_mixer("mamba_mixer", 8).double()
    swapped = create_mixer("mamba_mixer", 8).double()
    swapped.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        for name in ("x_proj", "dt_proj", "dt_bias", "A_log", "D"):
            getattr(swapped.ssm, name).copy_(getattr(mixer.ssm, name)[[1, 0, 3, 2]])
        swapped.conv2d.weight.copy_(mixer.conv2d.weight.transpose(2, 3))
    x = torch.randn(2, 5, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(swapped(x.transpose(1, 2)), mixer(x).transpose(1, 2))


# --- mixers --------------------------------------------------------------------------------------------------


def test_mamba_mixer_equals_four_reference_scans() -> None:
    """The batched grouped scan equals four separate reference S6 passes, merged by explicit loops."""
    mixer = create_mixer("mamba_mixer", 4, d_state=3).double()
    H, W, E = 3, 4, mixer.d_inner
    x = torch.randn(1, H, W, 4, dtype=torch.float64)
    xi, z = mixer.in_proj(x).chunk(2, dim=-1)
    xi = torch.nn.functional.silu(mixer.conv2d(xi.permute(0, 3, 1, 2)))  # (1, E, H, W)
    ssm = mixer.ssm
    orders = [[(h, w) for h in range(H) for w in range(W)], [(h, w) for w in range(W) for h in range(H)]]
    orders += [o[::-1] for o in orders]
    y = torch.zeros(1, E, H, W, dtype=torch.float64)
    for k, order in enumerate(orders):
        seq = torch.stack([xi[:, :, h, w] for h, w in order], dim=-1)  # (1, E, L)
        dt, Bk, Ck = (ssm.x_proj[k] @ seq).split([ssm.dt_rank, ssm.d_state, ssm.d_state], dim=1)
        out = selective_scan_ref(
            seq, ssm.dt_proj[k] @ dt, -torch.exp(ssm.A_log[k]), Bk, Ck, ssm.D[k], None, ssm.dt_bias[k], True
        )
        for t, (h, w) in enumerate(order):
            y[:, :, h, w] += out[:, :, t]
    expected = mixer.out_proj(mixer.out_norm(y.permute(0, 2, 3, 1)) * torch.nn.functional.silu(z))
    torch.testing.assert_close(mixer(x), expected)


def test_channel_mixer_is_per_token_and_resolution_independent() -> None:
    """The channel mixer's weights do not depend on the grid, and each token's output depends on that token only."""
    mixer = create_channel_mixer("mamba_channel_mixer", 32).double()
    x = torch.randn(2, 6, 5, 32, dtype=torch.float64)
    y = mixer(x)
    torch.testing.assert_close(mixer(x[:, 1:4, 2:3]), y[:, 1:4, 2:3])  # any sub-grid, any shape
    torch.testing.assert_close(mixer(x.reshape(1, 3, 20, 32)), y.reshape(1, 3, 20, 32))


# --- builder options and ViM2 --------------------------------------------------------------------------------

# ViM2 v1 appendix (params in M, top-1 at 224) and our exact counts (see models/vim2_family.py for the gap).
VIM2_PUBLISHED = {"vim2_t": (20.0, 82.7), "vim2_s": (43.0, 83.7), "vim2_b": (74.0, 83.9)}
VIM2_PARAMS = {"vim2_t": 22_451_719, "vim2_s": 40_355_284, "vim2_b": 69_667_572}


def _tiny(mixer: Any = "mamba_mixer", weighted_average: bool = False) -> MetaFormer:
    block = {"name": "metaformer", "mlp": {"name": "mamba_channel_mixer", "hidden_dim": 32}, "norm": "layernorm"}
    extras = [{"name": "weighted_average"}] if weighted_average else []
    block["mlp_every"] = [1, 2]
    return MetaFormer(depths=(2, 3), dims=(16, 32), mixer=mixer, block=block, extras=extras, num_classes=10)


def test_channel_mixer_spec_fills_the_mlp_slot_and_mlp_every_drops_it() -> None:
    model = _tiny()
    stage0, stage1 = model.stages
    assert all(isinstance(block.mlp, MambaChannelMixer) for block in stage0.blocks)
    assert [block.mlp is not None for block in stage1.blocks] == [False, True, False]
    assert [block.num_sublayers for block in stage1.blocks] == [1, 2, 1]
    assert not any(name.startswith("stages.1.blocks.0.norm2") for name, _ in model.named_parameters())


@pytest.mark.parametrize("mixer", ["mamba_mixer", "pooling"])
def test_weighted_average_at_init_equals_the_plain_residual_network(mixer: str) -> None:
    plain = _tiny(mixer).eval()
    dense = _tiny(mixer, weighted_average=True).eval()
    missing, unexpected = dense.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == ["stages.0.averaging.weights", "stages.1.averaging.weights"]
    assert dense.stages[1].averaging.weights.numel() == 4 * 5 // 2  # 4 sub-layers: T, T, C, T
    x = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), plain(x), rtol=0, atol=0)


def test_weighted_average_weights_learn_and_change_the_output() -> None:
    model = _tiny(weighted_average=True)
    x = torch.randn(2, 3, 32, 32)
    model(x).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    weights = model.stages[1].averaging.weights
    assert weights.grad.abs().min() > 0  # every scalar, also the zero-initialised ones, gets a gradient
    assert {f"stages.{i}.averaging.weights" for i in range(2)} <= model.no_weight_decay()
    before = model(x)
    with torch.no_grad():
        weights[0] += 0.5
    assert not torch.allclose(model(x), before)


@pytest.mark.parametrize("name", list(VIM2_PUBLISHED))
def test_vim2_params_against_published(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    count = num_params(model)
    assert count == VIM2_PARAMS[name]
    published = VIM2_PUBLISHED[name][0] * 1e6
    assert abs(count / published - 1) < (0.13 if name == "vim2_t" else 0.10)  # T: +12.3 %, see vim2_family.py


def test_vim2_t_runs_on_any_input_size_with_features() -> None:
    model = timm.create_model("vim2_t", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5)
        features = model.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [f.shape[1:] for f in features] == [(96, 16, 16), (192, 8, 8), (384, 4, 4), (768, 2, 2)]
    assert [info["num_chs"] for info in model.feature_info] == [96, 192, 384, 768]
    assert {"A_log", "D", "dt_bias", "weights"} <= {n.rsplit(".", 1)[-1] for n in model.no_weight_decay()}
