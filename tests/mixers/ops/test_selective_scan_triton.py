"""The Triton S6 kernels (mixers/ops/selective_scan_triton.py) on the CPU, in the Triton interpreter: forward and
backward against the sequential reference (lengths below, at and off the chunk size, grouped B/C, every optional
input, channel blocks that do not divide the group), exact in float64, float32 stability where cumulative decays
overflow, half-precision inputs, the states kept for the backward, and the backend dispatch. On a GPU,
tests/test_cuda.py compares the compiled kernels with the torch path.

Triton reads ``TRITON_INTERPRET`` when it is imported (its own ``tl.sum``, ``tl.sigmoid``... are ``triton.jit``
functions, compiled or interpreted from then on), and the test session imports it early (timm does). So the kernel
tests run in a subprocess of ``test_triton_kernels_pass_in_the_interpreter``, ``pytest`` on this file with
``TRITON_INTERPRET=1``, and are skipped in the parent session. The interpreter walks each program's tokens in
Python, so every case is a few programs of a few tokens (the subprocess takes ~5 s plus its start)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import mixerzoo.mixers.ops.selective_scan as ss
import mixerzoo.mixers.ops.selective_scan_triton as st
from mixerzoo.mixers.ops.selective_scan import selective_scan, selective_scan_ref, selective_scan_torch

ROOT = Path(__file__).resolve().parents[3]
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    not INTERPRETER, reason="runs in the TRITON_INTERPRET=1 subprocess of test_triton_kernels_pass_in_the_interpreter"
)
CHUNK, BLOCK_D, N = 4, 4, 4  # tokens between kept states, channels per program, d_state

# (batch, D, groups, L, options): L = 1, one chunk exactly, several chunks with a partial last one; D / G channels
# per group in blocks of 4 (6 channels: one full block and one half-masked; 3 or 4 channels: one block)
CASES = {
    "L1": (1, 6, None, 1, dict()),
    "one_chunk_z": (1, 6, None, 4, dict(z=True)),
    "partial_chunk_b2": (2, 6, None, 9, dict()),
    "grouped_all": (1, 6, 3, 11, dict(D=True, z=True, delta_bias=True, delta_softplus=True)),
    "grouped_D_softplus": (1, 8, 2, 7, dict(D=True, delta_bias=True, delta_softplus=True)),
}


@pytest.mark.slow
def test_triton_kernels_pass_in_the_interpreter() -> None:
    if INTERPRETER:
        pytest.skip("this is the interpreter subprocess")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "--noconftest"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", summary) and "failed" not in summary and "error" not in summary, summary


@pytest.mark.skipif(INTERPRETER, reason="compiles the kernels, which are interpreted in this process")
@pytest.mark.parametrize("kernel", ["_forward_kernel", "_backward_kernel"])
def test_triton_kernels_compile_for_sm90_without_a_gpu(kernel: str) -> None:
    """What the interpreter cannot show: the kernels pass Triton's compiler (typed loop-carried values, static
    branches, atomics, barriers) down to sm_90 machine code, at the default launch (block_d 16, N 16, every option)."""
    import triton
    from triton.backends.compiler import GPUTarget

    fn = getattr(st, kernel)
    signature = {
        name: "*fp32" if name.endswith("_ptr") else "constexpr" if name.isupper() else "i32" for name in fn.arg_names
    }
    _, launch = st._launch(torch.empty(1, 16, 1), torch.empty(16, 16), torch.empty(1, 1, 16, 1), block_d=16)
    flags = dict(CHUNK=64, HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
    if kernel == "_forward_kernel":
        flags["STORE_STATES"] = True
    constexprs = dict(flags, BLOCK_D=launch["BLOCK_D"], BLOCK_N=launch["BLOCK_N"], ACC=launch["ACC"])
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=launch["num_warps"]))
    assert compiled.asm["cubin"]


def _inputs(batch, dim, groups, length, options, dtype=torch.float64, seed=0):
    """u, Δ, A, B, C and the optional inputs ``options`` asks for, as leaves (Δ > 0 without softplus)."""
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, N, length) if groups is None else (batch, groups, N, length)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    delta = randn(batch, dim, length)
    tensors = dict(
        u=randn(batch, dim, length),
        delta=delta if options.get("delta_softplus") else delta.abs(),
        A=-torch.rand(dim, N, generator=gen, dtype=dtype) - 0.1,
        B=randn(*bc_shape),
        C=randn(*bc_shape),
    )
    optional = dict(D=randn(dim), z=randn(batch, dim, length), delta_bias=randn(dim))
    tensors |= {k: v for k, v in optional.items() if options.get(k)}
    return {k: v.requires_grad_() for k, v in tensors.items()}, options.get("delta_softplus", False)


def _values_and_grads(scan, tensors, softplus, seed=1):
    out = scan(**tensors, delta_softplus=softplus)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    return [out, *torch.autograd.grad(out, list(tensors.values()), weight)]


def _max_relative_errors(actual, expected) -> list[float]:
    """Per tensor: max |actual - expected| over max |expected|."""
    return [
        ((a.double() - e.double()).abs().max() / e.double().abs().max().clamp_min(1e-30)).item()
        for a, e in zip(actual, expected, strict=True)
    ]


@interpreted
@pytest.mark.parametrize("case", list(CASES))
def test_triton_scan_equals_the_sequential_reference_in_float32(case: str) -> None:
    """float32 kernels against the float64 reference of the same values: output and every gradient."""
    tensors, softplus = _inputs(*CASES[case])
    as32 = {k: v.detach().float().requires_grad_() for k, v in tensors.items()}

    def triton_scan(**kw):
        return st.selective_scan_triton(**kw, chunk_size=CHUNK, block_d=BLOCK_D)

    actual = _values_and_grads(triton_scan, as32, softplus)
    expected = _values_and_grads(selective_scan_ref, tensors, softplus)
    assert all(t.dtype == torch.float32 for t in actual)
    errors = _max_relative_errors(actual, expected)
    assert max(errors) < 2e-6, dict(zip(["y", *tensors], errors))


@interpreted
def test_triton_scan_is_exact_in_float64() -> None:
    """float64 in, float64 compute: the same algorithm as the reference to rounding (all options, grouped)."""
    tensors, softplus = _inputs(*CASES["grouped_all"])

    def triton_scan(**kw):
        return st.selective_scan_triton(**kw, chunk_size=3, block_d=2)

    actual = _values_and_grads(triton_scan, tensors, softplus)
    expected = _values_and_grads(selective_scan_ref, tensors, softplus)
    assert max(_max_relative_errors(actual, expected)) < 1e-12


@interpreted
def test_triton_scan_is_stable_where_cumulative_decays_overflow() -> None:
    """Δ·|A| up to ~100 per token: exp of a cumulative Σ Δ|A| over a chunk overflows float32; forward and backward
    must still match the float64 reference."""
    tensors, softplus = _inputs(1, 4, 2, 24, dict())
    with torch.no_grad():
        tensors["delta"].mul_(5)
        tensors["A"].mul_(20)
    as32 = {k: v.detach().float().requires_grad_() for k, v in tensors.items()}

    def triton_scan(**kw):
        return st.selective_scan_triton(**kw, chunk_size=8)

    actual = _values_and_grads(triton_scan, as32, softplus)
    expected = _values_and_grads(selective_scan_ref, tensors, softplus)
    assert all(torch.isfinite(t).all() for t in actual)
    assert max(_max_relative_errors(actual, expected)) < 1e-5


@interpreted
def test_triton_scan_reads_half_precision_and_accumulates_in_float32() -> None:
    tensors, softplus = _inputs(1, 4, None, 6, dict(D=True, z=True), dtype=torch.float32)
    half = {k: (v.detach() if k in ("A", "D") else v.detach().bfloat16()).requires_grad_() for k, v in tensors.items()}
    out = st.selective_scan_triton(**half, delta_softplus=softplus)
    grads = torch.autograd.grad(out, list(half.values()), torch.ones_like(out))
    assert out.dtype == torch.bfloat16
    assert [g.dtype for g in grads] == [t.dtype for t in half.values()]
    expected = selective_scan_ref(**{k: v.detach().float() for k, v in half.items()}, delta_softplus=softplus)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 rounding of the output only


@interpreted
def test_triton_training_keeps_only_the_states_entering_each_chunk() -> None:
    batch, dim, length = 1, 4, 9
    tensors, _ = _inputs(batch, dim, None, length, dict(), dtype=torch.float32)
    saved: list[tuple[int, ...]] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        st.selective_scan_triton(**tensors, chunk_size=CHUNK)
    assert (batch, dim, -(-length // CHUNK), N) in saved  # (b, D, n_chunks, N)
    assert sum(torch.Size(s).numel() for s in saved) < 3 * batch * dim * length * N


@interpreted
@pytest.mark.parametrize("length", [5, 12, 24])
def test_triton_backward_scratch_is_sized_for_the_sequence_not_a_full_chunk(monkeypatch, length: int) -> None:
    """ViM2's channel mixer scans 12-48 tokens per pixel: the backward's scratch holds Q + 1 states per program with
    Q = the sequence rounded up to a power of two, not the default chunk of 64 (which is 50 GiB at batch 128)."""
    tensors, softplus = _inputs(2, 8, 2, length, dict(D=True), dtype=torch.float32)
    sizes: list[int] = []
    new_empty = torch.Tensor.new_empty

    def spy(self, size, *args, **kwargs):
        sizes.append(torch.Size(size if isinstance(size, (tuple, list)) else (size,)).numel())
        return new_empty(self, size, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "new_empty", spy)
    actual = _values_and_grads(lambda **kw: st.selective_scan_triton(**kw, block_d=4), tensors, softplus)  # Q 64
    monkeypatch.undo()
    programs, slot = 2 * 2 * 1, 4 * N  # (b G) x one block of the group's 4 channels; block_d x N
    q = 1 << (length - 1).bit_length()
    assert max(sizes) == programs * (q + 1) * slot < programs * (64 + 1) * slot
    expected = _values_and_grads(selective_scan_ref, {k: v.double() for k, v in tensors.items()}, softplus)
    assert max(_max_relative_errors(actual, expected)) < 2e-6


@interpreted
def test_backend_triton_dispatches_to_the_kernels_and_auto_never_on_cpu(monkeypatch) -> None:
    tensors, softplus = _inputs(*CASES["grouped_all"], dtype=torch.float32)
    args = [t.detach() for t in tensors.values()]
    via_triton = selective_scan(*args, delta_softplus=softplus, backend="triton")
    torch.testing.assert_close(via_triton, selective_scan_torch(*args, delta_softplus=softplus), rtol=1e-5, atol=1e-5)
    assert ss._choose("auto", args[0], args[2]) is not ss._selective_scan_triton  # CPU tensors: never under auto
    monkeypatch.setattr(st, "INTERPRETED", False)  # compiled kernels: CPU tensors are refused
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA tensors"):
        selective_scan(*args, backend="triton")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        st.selective_scan_triton(*args)
    with pytest.raises(ValueError, match="triton"):  # the unknown-backend message lists it
        selective_scan(*args, backend="cuda")
    with pytest.raises(ValueError, match="power of two"):
        st.selective_scan_triton(*args, block_d=3)
