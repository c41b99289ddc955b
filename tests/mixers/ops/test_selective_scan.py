"""The S6 selective scan (mixers/ops/selective_scan*.py): the tree-reduced linear recurrence against a step-by-step
loop, the chunked scan with either chunk step (the tree, and the step compiled by inductor) against the sequential
reference in float64 (values and gradients, any length against the chunk size, grouped B/C, every optional input, the
shapes of every model that uses the scan), gradcheck, float32 stability where exponents of cumulative sums would
overflow, the memory contract (only the inputs and chunk-entry states saved, nothing kept without gradients),
autocast, the dispatch, and the fallback where no C++ compiler is found.

The tree step runs in float64 and must match the reference to 1e-12, and passes gradcheck. The compiled step runs in
float32, the dtype the models give it, against the same float64 reference (largest error at most 1e-5 of the largest
value, values and the gradients of every input): gradients equal to the reference's autograd gradients are what
gradcheck would establish, and each dtype is one more set of compilations (inductor compiles the step and its
backward per dtype and softplus setting: 15 to 20 s each on an idle core with a cold cache)."""

from __future__ import annotations

import functools

import pytest
import torch

import mixerzoo.mixers.ops.selective_scan as ss
import mixerzoo.mixers.ops.selective_scan_chunked as sc
from mixerzoo.mixers.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_torch

# The compiled step's cases are slow (their first call compiles the step on a cold inductor cache). The fast lane
# still runs the compiled step: the compile-count test here, and the SSM mixers' tests (the CPU's default scan), which
# compare the mamba mixer with four reference scans.
STEPS = ["tree", pytest.param("compiled", marks=pytest.mark.slow)]
DTYPE = {"tree": torch.float64, "compiled": torch.float32}  # see the module docstring


def assert_scan_close(actual: torch.Tensor, expected: torch.Tensor, step: str, tolerance: float = 1e-12) -> None:
    """The tree step: ``actual`` equals ``expected`` to ``tolerance`` (relative and absolute). The compiled step (in
    float32): its largest error is at most 1e-5 of ``expected``'s largest value."""
    if step == "tree":
        torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance)
        return
    assert actual.dtype == torch.float32
    error = ((actual.double() - expected.double()).abs().max() / expected.double().abs().max().clamp_min(1e-30)).item()
    assert error < 1e-5, error


# which optional inputs are given; without softplus Δ is made positive (a decaying scan)
OPTIONS = {
    "plain": dict(),
    "D": dict(D=True),
    "z": dict(z=True),
    "bias_softplus": dict(delta_bias=True, delta_softplus=True),
    "all": dict(D=True, z=True, delta_bias=True, delta_softplus=True),
}


def _scan_inputs(batch: int, dim: int, d_state: int, length: int, groups: int | None = None, dtype=torch.float64):
    """u, Δ, A, B, C, D, z, Δ_bias with gradients (B, C grouped when ``groups`` is given)."""
    bc_shape = (batch, d_state, length) if groups is None else (batch, groups, d_state, length)
    tensors = [
        torch.randn(batch, dim, length, dtype=dtype),
        torch.randn(batch, dim, length, dtype=dtype),
        -torch.rand(dim, d_state, dtype=dtype) - 0.1,
        torch.randn(*bc_shape, dtype=dtype),
        torch.randn(*bc_shape, dtype=dtype),
        torch.randn(dim, dtype=dtype),
        torch.randn(batch, dim, length, dtype=dtype),
        torch.randn(dim, dtype=dtype),
    ]
    return [t.requires_grad_() for t in tensors]


def _select(inputs: list[torch.Tensor], options: dict) -> tuple[list, dict]:
    """The tensors a call with ``options`` differentiates (u, Δ, A, B, C and the optional ones given) and its kwargs."""
    u, delta, A, B, C, D, z, bias = inputs
    if not options.get("delta_softplus"):
        delta = delta.detach().abs().requires_grad_()
    kwargs = dict(
        D=D if options.get("D") else None,
        z=z if options.get("z") else None,
        delta_bias=bias if options.get("delta_bias") else None,
        delta_softplus=options.get("delta_softplus", False),
    )
    return [u, delta, A, B, C] + [t for t in kwargs.values() if isinstance(t, torch.Tensor)], kwargs


def _step_by_step(a: torch.Tensor, x: torch.Tensor, reverse: bool) -> torch.Tensor:
    out, h = torch.empty_like(x), torch.zeros_like(x[0])
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    for t in steps:
        h = a[t] * h + x[t]
        out[t] = h
    return out


@pytest.mark.parametrize("length", [1, 2, 3, 4, 7, 8, 13, 32, 33])
@pytest.mark.parametrize("reverse", [False, True])
def test_tree_linear_scan_equals_the_step_by_step_recurrence(length: int, reverse: bool) -> None:
    a = torch.rand(length, 2, 3, dtype=torch.float64)
    x = torch.randn(length, 2, 3, dtype=torch.float64)
    out = torch.full_like(x, float("nan"))  # every entry must be written
    sc._linear_scan(a, x, out, torch.empty(2 * x.numel(), dtype=x.dtype), reverse)
    # reverse: out[t] = a[t] out[t+1] + x[t], so the loop's decay at step t (multiplying out[t+1]) is a[t]
    torch.testing.assert_close(out, _step_by_step(a, x, reverse), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("length", [1, 5, 8, 31, 64])  # L < Q, multiples and non-multiples of Q = 8 (and STEP)
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("options", list(OPTIONS))
def test_chunked_scan_equals_sequential_reference(step: str, length: int, groups: int | None, options: str) -> None:
    differentiated, kwargs = _select(_scan_inputs(2, 6, 4, length, groups, dtype=DTYPE[step]), OPTIONS[options])
    u, delta, A, B, C = differentiated[:5]
    y_fast = selective_scan_torch(u, delta, A, B, C, chunk_size=8, compiled=step == "compiled", **kwargs)
    # the reference in float64 on the same values
    exact = {id(t): t.detach().double().requires_grad_() for t in differentiated}
    exact_kwargs = {k: exact[id(v)] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    y_ref = selective_scan_ref(*(exact[id(t)] for t in differentiated[:5]), **exact_kwargs)
    assert_scan_close(y_fast, y_ref, step)
    grad = torch.randn_like(y_ref)
    grads_fast = torch.autograd.grad(y_fast, differentiated, grad.to(y_fast.dtype))
    grads_ref = torch.autograd.grad(y_ref, [exact[id(t)] for t in differentiated], grad)
    for g_fast, g_ref in zip(grads_fast, grads_ref, strict=True):
        assert_scan_close(g_fast, g_ref, step, tolerance=1e-10)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("tile_elements", [1, 40, 150])  # one block per (entry, group) / per entry / 2 entries
def test_blocks_over_batch_and_groups_give_the_same_scan(step: str, tile_elements: int) -> None:
    inputs = _scan_inputs(3, 6, 4, 40, groups=3, dtype=DTYPE[step])
    differentiated, kwargs = _select(inputs, OPTIONS["all"])
    kwargs["compiled"] = step == "compiled"
    y_one = selective_scan_torch(*differentiated[:5], chunk_size=4, tile_elements=10**9, **kwargs)
    y_blocks = selective_scan_torch(*differentiated[:5], chunk_size=4, tile_elements=tile_elements, **kwargs)
    tolerance = 1e-12 if step == "tree" else 1e-6  # float32: the rows of a block may round differently
    torch.testing.assert_close(y_blocks, y_one, rtol=tolerance, atol=tolerance)
    grad = torch.randn_like(y_one)
    for g_blocks, g_one in zip(
        torch.autograd.grad(y_blocks, differentiated, grad), torch.autograd.grad(y_one, differentiated, grad)
    ):
        torch.testing.assert_close(g_blocks, g_one, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("options", ["plain", "all"])
def test_tree_scan_passes_gradcheck(groups: int | None, options: str) -> None:
    """The tree step in float64 (the compiled step's gradients are held to the reference's autograd gradients)."""
    differentiated, kwargs = _select(_scan_inputs(2, 4, 3, 7, groups), OPTIONS[options])
    D, z, bias = kwargs.pop("D"), kwargs.pop("z"), kwargs.pop("delta_bias")

    def fn(u, delta, A, B, C, *extra):
        optional = dict(zip(["D", "z", "delta_bias"], extra)) if extra else {}
        return selective_scan_torch(u, delta, A, B, C, chunk_size=3, compiled=False, **optional, **kwargs)

    extra = () if D is None else (D, z, bias)
    assert torch.autograd.gradcheck(fn, (*differentiated[:5], *extra))


@pytest.mark.parametrize("step", STEPS)
def test_float32_scan_is_stable_where_cumulative_decays_overflow(step: str) -> None:
    """Δ·|A| up to ~100 per token: exp of a cumulative Σ Δ|A| over a chunk (≫ 88) overflows float32; the scan must
    still match the float64 reference."""
    inputs = _scan_inputs(1, 4, 8, 200, groups=2, dtype=torch.float64)
    u, delta, A, B, C = (t.detach() for t in inputs[:5])
    delta, A = delta.abs() * 5, A * 20
    inputs32 = [t.float() for t in (u, delta, A, B, C)]
    y32 = selective_scan_torch(*inputs32, compiled=step == "compiled")
    y64 = selective_scan_ref(*(t.double() for t in inputs32))
    assert torch.isfinite(y32).all()
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("step", STEPS)
def test_training_saves_only_the_inputs_and_the_states_entering_each_chunk(step: str) -> None:
    """The backward keeps the inputs and n_chunks = L / Q states per channel, not a state per token (which the
    per-token formulation keeps twice: decays and states); of the (b, D, L) tensors only u and the raw Δ (Δ after
    bias and softplus is recomputed, not kept)."""
    batch, dim, d_state, length, chunk = 2, 16, 32, 128, 16
    u, delta, A, B, C, _, _, bias = _scan_inputs(batch, dim, d_state, length, groups=2, dtype=DTYPE[step])
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = selective_scan_torch(
            u, delta, A, B, C, delta_bias=bias, delta_softplus=True, chunk_size=chunk, compiled=step == "compiled"
        )
        y.sum().backward()
    assert (length // chunk) * batch * dim * d_state in saved
    assert saved.count(batch * dim * length) == 2  # u and Δ
    assert sum(saved) < length * batch * dim * d_state / 2


@pytest.mark.parametrize("step", STEPS)
def test_no_grad_path_gives_identical_output_and_keeps_no_states(monkeypatch, step: str) -> None:
    inputs = _scan_inputs(2, 6, 4, 37, groups=3, dtype=DTYPE[step])
    differentiated, kwargs = _select(inputs, OPTIONS["all"])
    kwargs["compiled"] = step == "compiled"
    y_grad = selective_scan_torch(*differentiated[:5], chunk_size=8, **kwargs)
    calls = []
    name = "_compiled_forward" if step == "compiled" else "_scan_forward"
    forward = getattr(sc, name)

    def spy(*args):
        y, starts = forward(*args)
        calls.append(starts)
        return y, starts

    monkeypatch.setattr(sc, name, spy)
    with torch.no_grad():
        y_no_grad = selective_scan_torch(*differentiated[:5], chunk_size=8, **kwargs)
    with torch.inference_mode():
        y_inference = selective_scan_torch(*differentiated[:5], chunk_size=8, **kwargs)
    assert calls == [None, None]
    torch.testing.assert_close(y_no_grad, y_grad, rtol=0, atol=0)
    torch.testing.assert_close(y_inference, y_grad, rtol=0, atol=0)


def test_the_compiled_step_compiles_once_for_training_inference_and_autocast() -> None:
    """Dynamo guards on each input's requires_grad and on the autocast state: the step sees neither, so a training
    step, an inference pass and a step under bf16 autocast share one compilation of each (before, every mode compiled
    the step and its backward again: a mixed-precision training step took four)."""
    differentiated, kwargs = _select(_scan_inputs(2, 6, 4, 37, dtype=torch.float32), OPTIONS["bias_softplus"])
    selective_scan_torch(*differentiated[:5], chunk_size=8, compiled=True, **kwargs).sum().backward()
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        selective_scan_torch(*differentiated[:5], chunk_size=8, compiled=True, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        selective_scan(*differentiated[:5], backend="compiled", **kwargs).sum().backward()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled


def test_scan_runs_in_float32_under_bf16_autocast(monkeypatch) -> None:
    u, delta, A, B, C, D, _, bias = (t.detach() for t in _scan_inputs(1, 8, 4, 20, dtype=torch.float32))
    dtypes = []

    def spy(forward):
        def recorded(*args):
            dtypes.append({t.dtype for t in args if isinstance(t, torch.Tensor)})
            return forward(*args)

        return recorded

    for name in ("_scan_forward", "_compiled_forward"):  # whichever step "auto" takes
        monkeypatch.setattr(sc, name, spy(getattr(sc, name)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, None, bias, True)
    assert y.dtype == torch.bfloat16
    assert dtypes == [{torch.float32}]
    bf = [t.bfloat16().float() for t in (u, delta, B, C)]
    y32 = selective_scan(bf[0], bf[1], A, bf[2], bf[3], D, None, bias, True)
    torch.testing.assert_close(y.float(), y32, rtol=1e-2, atol=1e-2)


# (batch, D, groups, L) of every scan the models run: ViM2's token mixer (4 directions of E = 2C channels, stage 1
# and 4 at 224 px; stage 1 shortened to 100 tokens) and its channel mixer (2 directions of g = 16 features over
# S = E / 16 channel groups, one sequence per pixel), MambaMixer as configured in the mixer grid
MODEL_SCANS = {
    "vim2_token_stage1": (1, 4 * 192, 4, 100),
    "vim2_token_stage4": (2, 4 * 1536, 4, 49),
    "vim2_channel_stage1": (6, 2 * 16, 2, 12),
    "vim2_channel_stage3": (4, 2 * 16, 2, 48),
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(MODEL_SCANS))
def test_compiled_step_equals_the_reference_on_model_shapes(shape: str) -> None:
    """float32, as the models run it: the compiled and the tree step against the float64 reference (values and
    gradients of every input)."""
    batch, dim, groups, length = MODEL_SCANS[shape]
    gen = torch.Generator().manual_seed(0)
    u, delta = (torch.randn(batch, dim, length, generator=gen) for _ in range(2))
    A = -torch.exp(torch.rand(dim, 16, generator=gen) * 3)  # S4D-real range
    B, C = (torch.randn(batch, groups, 16, length, generator=gen) for _ in range(2))
    D, bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen) - 3
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    weight = torch.randn(batch, dim, length, generator=gen)

    def run(scan, tensors):
        u, delta, A, B, C, D, bias = tensors
        y = scan(u, delta, A, B, C, D=D, delta_bias=bias, delta_softplus=True)
        return [y, *torch.autograd.grad(y, tensors, weight.to(y.dtype))]

    expected = run(selective_scan_ref, [t.detach().double().requires_grad_() for t in leaves])
    for backend in ("compiled", "tree"):
        actual = run(functools.partial(selective_scan, backend=backend), leaves)
        for name, a, e in zip(["y", "u", "delta", "A", "B", "C", "D", "bias"], actual, expected, strict=True):
            error = ((a.double() - e).abs().max() / e.abs().max()).item()
            assert error < 1e-5, (backend, name, error)


def test_auto_falls_back_to_the_tree_step_without_a_cpp_compiler_and_says_so_once(monkeypatch) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(ss, "_warned_no_compiler", set())
    sc.compiled_scan_available.cache_clear()
    try:
        with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
            assert "no-such-c++-compiler" in sc.compiled_scan_available("cpu")
            inputs = [t.detach() for t in _scan_inputs(1, 4, 3, 9, dtype=torch.float32)[:5]]
            with pytest.warns(UserWarning, match="compiled chunk step cannot be built.*tree step runs") as record:
                y = selective_scan(*inputs)
                selective_scan(*inputs)
            assert len(record) == 1
            assert ss._choose("auto", inputs[0], inputs[2]) is selective_scan_torch
            torch.testing.assert_close(y, selective_scan_ref(*inputs), rtol=1e-5, atol=1e-5)
            with pytest.raises(RuntimeError, match="backend='compiled' needs inductor"):
                selective_scan(*inputs, backend="compiled")
    finally:  # the compiler is back: forget the probe's answer
        sc.compiled_scan_available.cache_clear()


def test_auto_takes_the_compiled_step_on_cpu_where_a_compiler_is_found() -> None:
    u, A = torch.randn(1, 4, 8), -torch.rand(4, 16)
    assert sc.compiled_scan_available("cpu") is None  # g++ or clang++ on this machine
    assert ss._choose("auto", u, A) is ss._selective_scan_compiled
    assert ss._choose("tree", u, A) is ss._choose("torch", u, A) is selective_scan_torch


def test_scan_argument_errors() -> None:
    inputs = _scan_inputs(1, 2, 2, 3, dtype=torch.float32)
    with pytest.raises(ValueError, match="backend"):
        selective_scan(*inputs[:5], backend="cuda")
    with pytest.raises(RuntimeError, match="fused"):
        selective_scan(*inputs[:5], backend="fused")  # CPU tensors
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_torch(*inputs[:5], chunk_size=0)
    with pytest.raises(ValueError, match="groups"):
        selective_scan_torch(*inputs[:3], inputs[3][:, None].expand(1, 3, 2, 3), inputs[4][:, None].expand(1, 3, 2, 3))


def test_auto_backend_on_cuda_takes_mamba_ssm_or_the_torch_scan_never_triton() -> None:
    """The Triton kernels are opt-in (backend='triton') until they have run on a GPU: 'auto' with CUDA tensors and
    no mamba_ssm takes the verified torch scan, also where triton imports."""
    from tests.mixers.ops.test_ssd import _CudaLooking

    u = torch.randn(1, 4, 8).as_subclass(_CudaLooking)
    A = -torch.rand(4, 16)
    chosen = ss._choose("auto", u, A)
    assert chosen is (ss._selective_scan_fused if ss._importable("fused") else selective_scan_torch)


def test_an_installed_but_broken_kernel_warns_and_a_missing_one_is_silent(monkeypatch, recwarn) -> None:
    from mixerzoo.mixers import ops

    def fake_import(module: str):
        if module == "broken_kernel_for_test":
            raise ImportError("cannot import name 'launch' from 'triton.runtime'")
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    monkeypatch.setattr(ops.importlib, "import_module", fake_import)
    assert ops.optional_kernel("missing_kernel_for_test", "scan") is None
    assert not recwarn.list
    with pytest.warns(UserWarning, match=r"broken_kernel_for_test\.scan does not import \(ImportError: cannot import"):
        assert ops.optional_kernel("broken_kernel_for_test", "scan") is None
