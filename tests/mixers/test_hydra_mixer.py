"""Hydra (mixers/hydra_mixer.py), the matrix-mixer family (mixers/matrix_mixer.py) and the Hydra models
(models/hydra_family.py), each against an independent formulation: the Hydra layer against its explicitly built
quasiseparable L x L matrix, every matrix mixer's fast form against its materialised matrix. The SSD kernels are in
``tests/mixers/ops/test_ssd.py``; the model contract (forward, backward, features, bf16, compile) in
``tests/models/test_contract.py``."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from mixerzoo.mixers import create_mixer
from mixerzoo.mixers.hydra_mixer import Hydra
from mixerzoo.mixers.matrix_mixer import STRUCTURES, MatrixMixer
from mixerzoo.mixers.ssm_layers import GatedRMSNorm, conv1d_silu, init_dt_bias, same_conv1d
from tests.conftest import build_model


# --- layers shared by the SSM mixers ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_gated_rms_norm_is_the_reference_formula(norm_before_gate: bool) -> None:
    norm = GatedRMSNorm(6, eps=1e-5, norm_before_gate=norm_before_gate).double()
    with torch.no_grad():
        norm.weight.normal_()
    y, z = torch.randn(2, 3, 6, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    gated = y if norm_before_gate else y * F.silu(z)
    expected = gated / gated.square().mean(-1, keepdim=True).add(1e-5).sqrt() * norm.weight
    expected = expected * F.silu(z) if norm_before_gate else expected
    torch.testing.assert_close(norm(y, z), expected)
    assert norm(y.bfloat16(), z.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_silu_is_silu_of_the_conv_layer_forward_and_backward(bias: bool) -> None:
    conv = same_conv1d("test", 12, 5, bias=bias).double()
    proj = torch.randn(3, 9, 20, dtype=torch.float64, requires_grad=True)
    x = proj[..., 4:16]  # a strided slice of a projection, as in the mixers
    expected = F.silu(conv(x.transpose(1, 2)).transpose(1, 2))
    out = conv1d_silu(x, conv)
    torch.testing.assert_close(out, expected)
    weights = torch.randn_like(out)
    leaves = [proj, *conv.parameters()]
    for g, g_ref in zip(
        torch.autograd.grad((out * weights).sum(), leaves), torch.autograd.grad((expected * weights).sum(), leaves)
    ):
        torch.testing.assert_close(g, g_ref)
    conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the conv runs in bf16 under autocast, as nn.Conv1d does
        out = conv1d_silu(x.float(), conv)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and proj.grad.dtype == torch.float64


def test_dt_bias_init_starts_softplus_in_the_dt_range() -> None:
    dt = F.softplus(init_dt_bias((64, 8), dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4))
    assert dt.shape == (64, 8) and dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    assert init_dt_bias(5).shape == (5,)


# --- the hydra mixer ------------------------------------------------------------------------------------------
def _hydra_branches(mixer: Hydra, u: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's per-token quantities, recomputed from its parameters: z, x (post conv+SiLU), per-direction
    B, C (b, l, n; ngroups 1) and dt (b, l, h), all in original token order."""
    h, n, d = mixer.num_heads, mixer.d_state, mixer.d_inner
    proj = u @ mixer.in_proj.weight.T
    z, xbc, dt = proj[..., :d], proj[..., d : 2 * d + 4 * n], proj[..., 2 * d + 4 * n :]
    xbc = F.silu(
        F.conv1d(
            xbc.transpose(1, 2),
            mixer.conv1d.weight,
            mixer.conv1d.bias,
            padding=mixer.conv1d.padding,
            groups=xbc.shape[-1],
        )
    )
    xbc = xbc.transpose(1, 2)
    x, B_f, C_f, B_b, C_b = xbc.split([d, n, n, n, n], dim=-1)
    dt_f, dt_b = F.softplus(dt[..., :h] + mixer.dt_bias), F.softplus(dt[..., h:] + mixer.dt_bias)
    return dict(z=z, x=x, B_f=B_f, C_f=C_f, B_b=B_b, C_b=C_b, dt_f=dt_f, dt_b=dt_b)


def _hydra_matrix(mixer: Hydra, q: dict[str, torch.Tensor]) -> torch.Tensor:
    """The quasiseparable matrix (b, h, L, L), entry by entry from the paper's formula (spec section 1.1)."""
    b, L, _ = q["x"].shape
    A = -torch.exp(mixer.A_log)
    a_f, a_b = q["dt_f"] * A, q["dt_b"] * A  # (b, L, h)
    diag = q["x"] @ mixer.fc_D.weight.T + mixer.D  # (b, L, h)
    M = torch.zeros(b, mixer.num_heads, L, L, dtype=q["x"].dtype)
    for i in range(L):
        for j in range(L):
            if i > j:
                cb = (q["C_f"][:, i - 1] * q["B_f"][:, j]).sum(-1)[:, None]  # (b, 1)
                M[:, :, i, j] = cb * torch.exp(a_f[:, j + 1 : i].sum(1)) * q["dt_f"][:, j]
            elif i < j:
                cb = (q["C_b"][:, i + 1] * q["B_b"][:, j]).sum(-1)[:, None]
                M[:, :, i, j] = cb * torch.exp(a_b[:, i + 1 : j].sum(1)) * q["dt_b"][:, j]
            else:
                M[:, :, i, i] = diag[:, i]
    return M


def _perturbed_hydra(dim: int, **options) -> Hydra:
    """A float64 Hydra layer with non-trivial A, D and norm weights (the init values are all equal)."""
    mixer = create_mixer({"name": "hydra", **options}, dim).double()
    with torch.no_grad():
        mixer.A_log.uniform_(-1.0, 1.0)
        mixer.D.normal_()
        mixer.dt_bias.normal_()
        mixer.norm.weight.normal_()
    return mixer


@pytest.mark.parametrize("chunk_size", [4, None], ids=["chunked", "dense"])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5), (5, 2), (1, 7)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_hydra_equals_materialised_quasiseparable_matrix(grid: tuple[int, int], chunk_size: int | None) -> None:
    mixer = _perturbed_hydra(16, d_state=6, head_dim=8, chunk_size=chunk_size)
    u = torch.randn(2, *grid, 16, dtype=torch.float64)
    q = _hydra_branches(mixer, u.reshape(2, -1, 16))
    M = _hydra_matrix(mixer, q)
    b, L, _ = q["x"].shape
    y = torch.einsum("bhij,bjhp->bihp", M, q["x"].reshape(b, L, mixer.num_heads, -1)).reshape(b, L, -1)
    y = y * torch.rsqrt(y.square().mean(-1, keepdim=True) + 1e-5) * mixer.norm.weight * F.silu(q["z"])
    expected = (y @ mixer.out_proj.weight.T).reshape(u.shape)
    torch.testing.assert_close(mixer(u), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("grid", "learnable_init_states"), [((3, 7), False), ((3, 7), True), ((8, 12), True)])
def test_hydra_dense_and_chunked_forms_agree_on_outputs_and_every_gradient(
    grid: tuple[int, int], learnable_init_states: bool
) -> None:
    """The default dense L x L form (short sequences; 96 tokens: exponents in two row blocks) and the chunked
    two-scan form are the same layer."""
    options = dict(d_state=6, head_dim=8, ngroups=2, learnable_init_states=learnable_init_states)
    dense, chunked = _perturbed_hydra(32, **options), _perturbed_hydra(32, chunk_size=5, **options)
    chunked.load_state_dict(dense.state_dict())
    if learnable_init_states:
        with torch.no_grad():
            dense.init_states.normal_()
            chunked.init_states.copy_(dense.init_states)
    u = torch.randn(2, *grid, 32, dtype=torch.float64)
    weights = torch.randn_like(u)
    y_dense, y_chunked = dense(u), chunked(u)
    torch.testing.assert_close(y_dense, y_chunked, rtol=1e-10, atol=1e-10)
    (y_dense * weights).sum().backward()
    (y_chunked * weights).sum().backward()
    for (name, p), q in zip(dense.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-9, msg=name)


def test_hydra_shift_keeps_both_scans_off_the_diagonal() -> None:
    """With D = 0 and W_D = 0 a token's output does not depend on its own x (the diagonal comes only from δ),
    and the first token sees only the backward scan, the last only the forward one."""
    mixer = _perturbed_hydra(8, d_state=4, head_dim=8, d_conv=1)
    with torch.no_grad():
        mixer.D.zero_()
        mixer.fc_D.weight.zero_()
    q = _hydra_branches(mixer, torch.randn(1, 6, 8, dtype=torch.float64))
    M = _hydra_matrix(mixer, q)
    assert torch.all(M.diagonal(dim1=-2, dim2=-1) == 0)
    assert torch.all(M[..., 0, 0] == 0) and (M[..., 0, 1:] != 0).all() and (M[..., -1, :-1] != 0).all()
    # flipping the tokens and swapping the directions' projections flips the output
    u = torch.randn(1, 1, 6, 8, dtype=torch.float64)
    swapped = _perturbed_hydra(8, d_state=4, head_dim=8, d_conv=1)
    swapped.load_state_dict(mixer.state_dict())
    d, n, h = mixer.d_inner, mixer.d_state, mixer.num_heads
    with torch.no_grad():
        w = swapped.in_proj.weight
        w[2 * d : 2 * d + 2 * n], w[2 * d + 2 * n : 2 * d + 4 * n] = (
            mixer.in_proj.weight[2 * d + 2 * n : 2 * d + 4 * n].clone(),
            mixer.in_proj.weight[2 * d : 2 * d + 2 * n].clone(),
        )
        w[-2 * h : -h], w[-h:] = mixer.in_proj.weight[-h:].clone(), mixer.in_proj.weight[-2 * h : -h].clone()
        for p_swapped, p in ((swapped.conv1d.weight, mixer.conv1d.weight), (swapped.conv1d.bias, mixer.conv1d.bias)):
            p_swapped[d : d + 2 * n], p_swapped[d + 2 * n :] = p[d + 2 * n :].clone(), p[d : d + 2 * n].clone()
    torch.testing.assert_close(swapped(u.flip(2)), mixer(u).flip(2))


def test_hydra_parameter_count_at_768_is_the_official_one() -> None:
    mixer = create_mixer("hydra", 768)
    assert sum(p.numel() for p in mixer.parameters()) == 3_825_224
    assert mixer.num_heads == 24 and mixer.in_proj.out_features == 3376
    assert mixer.no_weight_decay() == {"A_log", "D", "dt_bias"}
    torch.testing.assert_close(-torch.exp(mixer.A_log), -torch.ones(24))


@pytest.mark.parametrize("chunk_size", [None, 8], ids=["dense", "chunked"])
def test_hydra_bf16_autocast_keeps_shape_dtype_and_scans_in_float32(
    monkeypatch: pytest.MonkeyPatch, chunk_size: int | None
) -> None:
    import mixerzoo.mixers.ops.ssd as ssd_module

    seen = []
    kernel = "_quasiseparable_dense" if chunk_size is None else "ssd_chunked"  # 30 tokens: dense unless chunked
    original = getattr(ssd_module, kernel)

    def spy(x, *args, **kwargs):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(ssd_module, kernel, spy)
    mixer = create_mixer({"name": "hydra", "d_state": 16, "head_dim": 16, "chunk_size": chunk_size}, 32)
    x = torch.randn(2, 5, 6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = mixer(x)
    assert y.shape == x.shape and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert seen == [(torch.float32, False)]
    torch.testing.assert_close(y.float(), mixer(x), rtol=0.05, atol=0.05)
    y.float().sum().backward()
    assert all(p.grad is not None for p in mixer.parameters())


def test_hydra_gradients_reach_every_parameter_including_init_states() -> None:
    mixer = create_mixer({"name": "hydra", "d_state": 8, "head_dim": 16, "learnable_init_states": True}, 32)
    mixer(torch.randn(2, 3, 5, 32)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert "init_states" in mixer.no_weight_decay()


def test_hydra_rejects_bad_shapes_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="must be divisible by head_dim"):
        create_mixer({"name": "hydra", "head_dim": 48}, 32)
    with pytest.raises(ValueError, match="d_conv must be odd"):
        create_mixer({"name": "hydra", "d_conv": 4}, 32)


# --- the matrix-mixer family ----------------------------------------------------------------------------------
MM_CASES = [(s, dd) for s in STRUCTURES for dd in (True, False) if not (dd and s in ("dense", "dft"))]


def _matrix_mixer(structure: str, data_dependent: bool, grid=(3, 5), dim: int = 16) -> MatrixMixer:
    spec = {"name": "matrix_mixer", "structure": structure, "data_dependent": data_dependent}
    qk = {} if structure in ("dense", "dft", "toeplitz") else {"qk_dim": 4}
    return create_mixer({**spec, **qk, "head_dim": 8, "d_conv": 3}, dim, grid=grid).double()


def _reference_matrix(mixer: MatrixMixer, x: torch.Tensor) -> torch.Tensor:
    """Entry-by-entry definitions (spec section 2, identity included) for the structures built from q/k or taps."""
    b, H, W, _ = x.shape
    L, h, d = H * W, mixer.num_heads, getattr(mixer, "qk_dim", 0)
    extra = mixer._branches(x.reshape(b, L, -1))[2]
    if mixer.data_dependent and mixer.structure != "toeplitz":
        q, k = extra[..., : h * d].unflatten(-1, (h, d)), extra[..., h * d :].unflatten(-1, (h, d))
    elif hasattr(mixer, "q_table"):
        q, k = mixer.q_table[None].expand(b, -1, -1, -1), mixer.k_table[None].expand(b, -1, -1, -1)
    M = torch.zeros(b, h, L, L, dtype=x.dtype)
    for i in range(L):
        for j in range(L):
            s = mixer.structure
            if s == "toeplitz":
                t = i - j
                if mixer.data_dependent:
                    taps = extra[:, t, :h] if t >= 0 else extra[:, -t, h:]  # forward tap f_t / reverse tap r_{-t}
                else:
                    taps = mixer.kernel[:, t + L - 1][None]
                M[:, :, i, j] = 0.5 / L**0.5 * taps
            elif s == "vandermonde":
                eps = 1e-3 if mixer.data_dependent else 1.0
                terms = torch.cos(2 * torch.pi * eps * q[:, i] * j) - torch.cos(2 * torch.pi * eps * k[:, j] * i)
                M[:, :, i, j] = terms.sum(-1) / (2 * L * d) ** 0.5
            elif s == "cauchy":
                c = mixer.cauchy_bias if mixer.data_dependent else 0.0
                M[:, :, i, j] = (1 / (q[:, i].exp() + c + k[:, j].exp() + c + 1e-8)).sum(-1) / (L * d) ** 0.5
            elif s == "low_rank":
                M[:, :, i, j] = (q[:, i] * k[:, j]).sum(-1) / (L * d) ** 0.5
            elif s == "dft":
                M[:, :, i, j] = torch.cos(torch.tensor(2 * torch.pi * i * j / L, dtype=x.dtype)) / L**0.5
    if mixer.structure == "attention":
        M = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k) / d**0.5, dim=-1)
    if mixer.structure == "dense":
        M = (mixer.M / L**0.5).expand(b, -1, -1, -1)
    return M + torch.eye(L, dtype=x.dtype)


@pytest.mark.parametrize(("structure", "data_dependent"), MM_CASES, ids=lambda v: str(v))
def test_matrix_mixer_fast_form_equals_its_materialised_matrix(structure: str, data_dependent: bool) -> None:
    mixer = _matrix_mixer(structure, data_dependent)
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), mixer(x, materialize=True), rtol=1e-9, atol=1e-9)
    if structure != "quasiseparable":  # (quasiseparable: tested against Hydra's entry formula below)
        torch.testing.assert_close(mixer.mixing_matrix(x).expand(2, -1, -1, -1), _reference_matrix(mixer, x))


def test_quasiseparable_matrix_mixer_is_hydra_with_shared_bc() -> None:
    mixer = _matrix_mixer("quasiseparable", True)
    hydra = create_mixer({"name": "hydra", "d_state": mixer.d_state, "head_dim": 8, "d_conv": 3}, 16).double()
    d, n, h = mixer.d_inner, mixer.d_state, mixer.num_heads
    state = {k: v for k, v in mixer.state_dict().items() if k != "in_proj.weight" and not k.startswith("conv1d")}
    w, cw, cb = mixer.in_proj.weight, mixer.conv1d.weight, mixer.conv1d.bias
    # hydra's layout [z, x, B_f, C_f, B_b, C_b, dt_f, dt_b]; the matrix mixer's [z, v, B, C, dt_f, dt_b]
    bc = slice(2 * d, 2 * d + 2 * n)
    state["in_proj.weight"] = torch.cat([w[: 2 * d], w[bc], w[bc], w[2 * d + 2 * n :]])
    state["conv1d.weight"] = torch.cat([cw[:d], cw[d:], cw[d:]])
    state["conv1d.bias"] = torch.cat([cb[:d], cb[d:], cb[d:]])
    hydra.load_state_dict(state)
    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(hydra(x), mixer(x))
    assert h == hydra.num_heads


def test_matrix_mixer_builds_one_class_per_structure_with_its_own_options() -> None:
    for structure, cls in STRUCTURES.items():
        spec = {"name": "matrix_mixer", "structure": structure, "data_dependent": not cls.data_independent_only}
        mixer = create_mixer(spec, 16, grid=(2, 3))
        assert type(mixer) is cls and mixer.structure == structure
    assert isinstance(create_mixer("matrix_mixer", 16), STRUCTURES["quasiseparable"])
    with pytest.raises(TypeError, match=r"matrix_mixer \(toeplitz\) got unknown option\(s\) \['qk_dim'\]"):
        create_mixer({"name": "matrix_mixer", "structure": "toeplitz", "qk_dim": 4}, 16)
    with pytest.raises(ValueError, match="unknown structure 'circulant'"):
        create_mixer({"name": "matrix_mixer", "structure": "circulant"}, 16)


@pytest.mark.parametrize(("structure", "data_dependent"), MM_CASES, ids=lambda v: str(v))
def test_matrix_depends_on_the_input_only_when_data_dependent(structure: str, data_dependent: bool) -> None:
    mixer = _matrix_mixer(structure, data_dependent)
    a, b = (mixer.mixing_matrix(torch.randn(2, 3, 5, 16, dtype=torch.float64)) for _ in range(2))
    if structure == "quasiseparable" and not data_dependent:  # keeps Hydra's diagonal D + W_D x (official)
        a, b = (m - torch.diag_embed(m.diagonal(dim1=-2, dim2=-1)) for m in (a, b))
    assert torch.allclose(a, b) != data_dependent


@pytest.mark.parametrize(("structure", "data_dependent"), MM_CASES, ids=lambda v: str(v))
def test_matrix_mixer_gradients_reach_every_parameter(structure: str, data_dependent: bool) -> None:
    mixer = _matrix_mixer(structure, data_dependent).float()
    mixer(torch.randn(2, 3, 5, 16)).square().sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("structure", ["dense", "toeplitz", "dft", "quasiseparable"])
def test_data_independent_forms_reject_another_grid_and_name_it(structure: str) -> None:
    mixer = _matrix_mixer(structure, False, grid=(4, 4))
    with pytest.raises(ValueError, match=r"built for a 4x4 token grid, got 5x3"):
        mixer(torch.randn(1, 5, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="needs the token grid"):
        create_mixer({"name": "matrix_mixer", "structure": structure, "data_dependent": False}, 16)
    with pytest.raises(ValueError, match="exists only data-independent"):
        create_mixer({"name": "matrix_mixer", "structure": "dense"}, 16)


def test_data_dependent_matrix_mixers_take_any_grid_and_bf16_autocast() -> None:
    for structure in ("toeplitz", "cauchy", "low_rank", "quasiseparable"):
        mixer = create_mixer({"name": "matrix_mixer", "structure": structure, "head_dim": 16}, 32)
        for grid in [(7, 7), (2, 9), (1, 1)]:
            assert mixer(torch.randn(2, *grid, 32)).shape == (2, *grid, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = mixer(torch.randn(2, 5, 6, 32))
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# --- models -----------------------------------------------------------------------------------------------------
HYDRA_VIT_B_PUBLISHED = dict(params=91.0, top1=81.0, top1_ema=81.6)  # Table 5


def test_hydra_vit_b_params_within_3_percent_of_the_paper() -> None:
    with torch.device("meta"):
        model = timm.create_model("hydra_vit_b")
    params = sum(p.numel() for p in model.parameters())
    # stem 3*256*768 + 768; 24 x (LayerNorm 1536 + Hydra 3,825,224); head LayerNorm 1536 + 768*1000 + 1000
    assert params == 590_592 + 24 * (1_536 + 3_825_224) + 1_536 + 769_000 == 93_203_368
    assert abs(params / 1e6 - HYDRA_VIT_B_PUBLISHED["params"]) <= 0.03 * HYDRA_VIT_B_PUBLISHED["params"]


def test_hydra_vit_blocks_are_mixer_only_without_positional_embedding() -> None:
    with torch.device("meta"):
        model = timm.create_model("hydra_vit_b")
    block = model.stages[0].blocks[0]
    assert block.mlp is None and block.norm2 is None and isinstance(block.token_mixer, Hydra)
    assert len(model.stages) == 1 and len(model.stages[0].blocks) == 24
    assert model.stem.conv.kernel_size == model.stem.conv.stride == (16, 16)
    assert not any("pos" in name for name, _ in model.named_parameters())
    assert "stages.0.blocks.0.token_mixer.A_log" in model.no_weight_decay()


def test_hydra_in_the_comparison_backbone_replaces_every_mixer() -> None:
    with torch.device("meta"):
        model = build_model("hydra_metaformer_s12", num_classes=3)
    assert all(isinstance(b.token_mixer, Hydra) for s in model.stages for b in s.blocks)
    assert model.stages[0].blocks[0].token_mixer.num_heads == 4
