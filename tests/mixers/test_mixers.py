"""Token mixers: the registry contract, shapes and gradients for every mixer, and each baseline mixer against an
independent formulation of its math."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

import mixerzoo.mixers as mixers
from mixerzoo.mixers import create_channel_mixer, create_mixer, list_channel_mixers, list_mixers, register_mixer
from mixerzoo.mixers.registry import MIXERS

GRIDS = [(7, 7), (5, 9), (6, 3), (1, 1)]  # square, non-square with odd sides, tiny


def test_registry_lists_the_baseline_mixers() -> None:
    assert {"pooling", "identity", "random", "sepconv", "attention"} <= set(list_mixers())


def test_unknown_mixer_error_lists_known_names() -> None:
    with pytest.raises(ValueError, match="Unknown token mixer 'poolin'") as info:
        create_mixer("poolin", 16)
    for name in list_mixers():
        assert name in str(info.value)


def test_unknown_option_raises_and_names_accepted_options() -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['pool_sise'\].*pool_size"):
        create_mixer({"name": "pooling", "pool_sise": 5}, 16)


def test_spec_forms_are_equivalent() -> None:
    from_name = create_mixer("attention", 64)
    from_mapping = create_mixer({"name": "attention", "head_dim": 16}, 64)
    from_omegaconf = create_mixer(OmegaConf.create({"name": "attention", "head_dim": 16}), 64)
    assert from_name.num_heads == 2
    assert from_mapping.num_heads == from_omegaconf.num_heads == 4


def test_bad_specs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="needs a 'name' key"):
        create_mixer({"head_dim": 16}, 64)
    with pytest.raises(TypeError, match="a name or a mapping"):
        create_mixer(3, 64)


def test_context_is_passed_only_to_mixers_that_ask_for_it() -> None:
    # pooling takes any grid and does not name `grid`; random needs it. Both accept the same context.
    context = {"grid": (4, 4), "img_size": (16, 16)}
    pool = create_mixer("pooling", 8, context=context)
    rand = create_mixer("random", 8, context=context)
    assert isinstance(pool, mixers.pooling.Pooling)
    assert rand.grid == (4, 4)


def test_keyword_options_are_applied_or_raise() -> None:
    """Options passed as keywords are applied like a spec's: the official name ``headdim`` (Hydra's layer calls it
    ``head_dim``) raises instead of being dropped, and a context entry never passes as an option."""
    assert create_mixer("hydra", 192, head_dim=96).head_dim == 96
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['headdim'\].*head_dim"):
        create_mixer("hydra", 192, headdim=96)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['grid'\]"):
        create_mixer("pooling", 8, grid=(4, 4))
    with pytest.raises(TypeError, match="both in the spec and as keywords"):
        create_mixer({"name": "attention", "head_dim": 16}, 64, head_dim=32)
    assert create_mixer({"name": "attention"}, 64, head_dim=16).num_heads == 4


def test_unknown_mixer_error_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="Did you mean 'pooling'"):
        create_mixer("poolin", 16)


def test_registering_a_taken_name_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("pooling")(type("Other", (nn.Module,), {}))


ALL = [("token", n) for n in list_mixers()] + [("channel", n) for n in list_channel_mixers()]


def _create(kind: str, name: str, dim: int, grid: tuple[int, int]) -> nn.Module:
    return create_mixer(name, dim, context={"grid": grid}) if kind == "token" else create_channel_mixer(name, dim)


@pytest.mark.parametrize(("kind", "name"), ALL, ids=lambda v: str(v))
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_mixer_preserves_shape(kind: str, name: str, grid: tuple[int, int]) -> None:
    mixer = _create(kind, name, 32, grid)
    x = torch.randn(2, *grid, 32)
    assert mixer(x).shape == x.shape


@pytest.mark.parametrize(("kind", "name"), ALL, ids=lambda v: str(v))
def test_gradients_reach_every_parameter(kind: str, name: str) -> None:
    mixer = _create(kind, name, 32, (5, 6))
    x = torch.randn(2, 5, 6, 32, requires_grad=True)
    mixer(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


@pytest.mark.parametrize(("kind", "name"), ALL, ids=lambda v: str(v))
def test_bf16_autocast_keeps_shape_and_dtype_and_stays_close_to_float32(kind: str, name: str) -> None:
    mixer = _create(kind, name, 32, (4, 3)).eval()
    x = torch.randn(2, 4, 3, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixer(x.bfloat16())  # what the previous layer of a network under autocast hands on
        reference = mixer(x.bfloat16().float())
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), reference, rtol=0.1, atol=0.1)


def test_pooling_equals_border_aware_mean_minus_input() -> None:
    H, W, C = 5, 4, 3
    x = torch.randn(2, H, W, C, dtype=torch.float64)
    expected = torch.empty_like(x)
    for i in range(H):
        for j in range(W):
            window = x[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, :]  # valid neighbours only
            expected[:, i, j] = window.mean(dim=(1, 2)) - x[:, i, j]
    torch.testing.assert_close(create_mixer("pooling", C)(x), expected)
    # corner = mean of 4 values, edge = of 6, inside = of 9
    corner = x[:, :2, :2].mean(dim=(1, 2)) - x[:, 0, 0]
    torch.testing.assert_close(create_mixer("pooling", C)(x)[:, 0, 0], corner)


def test_identity_returns_its_input() -> None:
    x = torch.randn(2, 3, 5, 8)
    assert torch.equal(create_mixer("identity", 8)(x), x)


def test_random_matrix_is_row_stochastic_frozen_and_saved() -> None:
    mixer = create_mixer("random", 16, grid=(3, 5))
    W = mixer.random_matrix
    assert W.shape == (15, 15)
    assert (W > 0).all()
    torch.testing.assert_close(W.sum(dim=-1), torch.ones(15))
    assert list(mixer.parameters()) == []  # a buffer: no gradient, no optimizer state, nothing for DDP
    assert "random_matrix" in mixer.state_dict()
    x = torch.randn(2, 3, 5, 16, requires_grad=True)
    mixer(x).sum().backward()
    assert not W.requires_grad and W.grad is None


def test_random_mixing_equals_explicit_token_sum() -> None:
    mixer = create_mixer("random", 4, grid=(2, 3)).double()
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64)
    tokens = [x[:, i, j] for i in range(2) for j in range(3)]  # row-major token order
    expected = torch.stack([sum(mixer.random_matrix[m, n] * tokens[n] for n in range(6)) for m in range(6)], 1)
    torch.testing.assert_close(mixer(x), expected.reshape(2, 2, 3, 4))


def test_random_mixing_rejects_another_grid_and_names_the_fix() -> None:
    mixer = create_mixer("random", 8, grid=(14, 14), img_size=(224, 224))
    with pytest.raises(ValueError, match=r"built for a 14x14 token grid \(the grid of a 224x224 input\), got 16x16"):
        mixer(torch.randn(1, 16, 16, 8))


def test_sepconv_equals_nchw_convolution_formulation() -> None:
    mixer = create_mixer("sepconv", 6).double()
    x = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    s, b = mixer.act1.scale, mixer.act1.bias
    nchw = x.permute(0, 3, 1, 2)
    y = F.conv2d(nchw, mixer.pwconv1.weight[:, :, None, None])
    y = s * F.relu(y) ** 2 + b
    y = F.conv2d(y, mixer.dwconv.weight, padding=3, groups=12)
    y = F.conv2d(y, mixer.pwconv2.weight[:, :, None, None])
    torch.testing.assert_close(mixer(x), y.permute(0, 2, 3, 1))


def test_attention_equals_explicit_softmax() -> None:
    mixer = create_mixer("attention", 64, head_dim=16).double()
    x = torch.randn(2, 3, 4, 64, dtype=torch.float64)
    tokens = x.reshape(2, 12, 64)
    q, k, v = (tokens @ mixer.qkv.weight.T).split(64, dim=-1)
    heads = []
    for h in range(4):
        sl = slice(16 * h, 16 * (h + 1))
        attn = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 4.0, dim=-1)
        heads.append(attn @ v[..., sl])
    expected = torch.cat(heads, dim=-1) @ mixer.proj.weight.T
    torch.testing.assert_close(mixer(x), expected.reshape(2, 3, 4, 64))


def test_attention_heads_follow_metaformer_rule() -> None:
    assert create_mixer("attention", 320).num_heads == 10
    assert create_mixer("attention", 576).num_heads == 18
    assert create_mixer("attention", 16).num_heads == 1  # C // 32 == 0 -> 1 head


def test_a_new_mixer_plugs_in_by_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    class Shift(nn.Module):
        def __init__(self, dim: int, shift: int = 1) -> None:
            super().__init__()
            self.shift = shift

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.roll(x, self.shift, dims=1)

    monkeypatch.setitem(MIXERS._entries, "test_shift", Shift)
    from mixerzoo.models import MetaFormer

    model = MetaFormer(depths=(1, 1), dims=(8, 16), mixer=[{"name": "test_shift", "shift": 2}, "pooling"])
    assert model.stages[0].blocks[0].token_mixer.shift == 2
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("name", list_channel_mixers())
def test_channel_mixers_mix_no_tokens(name: str) -> None:
    """A registered channel mixer changes only the token it is given, or with a depthwise conv inside (convnext 7x7,
    inverted_residual 3x3) that token's kernel neighbourhood, never the whole grid; token mixers are registered
    apart."""
    assert name not in list_mixers()
    mixer = create_channel_mixer(name, 16).eval()
    x = torch.randn(1, 9, 9, 16)
    y = x.clone()
    y[0, 0, 0] += 1.0
    with torch.no_grad():
        changed = (mixer(y) - mixer(x)).abs().amax(dim=-1)[0] > 1e-6  # (H, W)
    reach = {"convnext": 4, "inverted_residual": 2}.get(name, 1)  # rows/columns a k x k conv reaches from a corner
    assert changed[:reach, :reach].any() and not changed[reach:].any() and not changed[:, reach:].any()
