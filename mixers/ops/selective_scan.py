"""Mamba-1 selective scan (S6): the interface the mixers call, over the kernels beneath it (Gu & Dao, "Mamba:
Linear-Time Sequence Modeling with Selective State Spaces", 2023, arXiv 2312.00752; semantics and argument layout of
state-spaces/mamba ``mamba_ssm/ops/selective_scan_interface.py``, ``selective_scan_fn`` / ``selective_scan_ref``).

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]          h_{-1} = 0
    y_t[d]    = Σ_n h_t[d, n] C_t[n] + D[d] u_t[d]        then  y ⊙ SiLU(z)  if z is given

with Δ = softplus(Δ + Δ_bias) if asked. Shapes (channels first): u, Δ, z (b, D, L); A (D, N); B, C (b, N, L) or
grouped (b, G, N, L); D, Δ_bias (D,). Output (b, D, L) in u's dtype.

The kernels (each module imports only ``selective_scan_reference``, never this one):

- ``selective_scan_reference``: ``selective_scan_ref``, the recurrence one token at a time (test oracle), and the
  helpers every kernel shares.
- ``selective_scan_chunked``: ``selective_scan_torch``, exact, in chunks, as a custom op with its own backward that
  keeps only the state entering each chunk; its chunk step either compiled by inductor into one fused kernel
  (``compiled``) or a pairwise tree of whole-slice ops (``tree``).
- ``selective_scan_triton``: the Triton kernels (forward and backward), GPU only (CPU tensors in the Triton
  interpreter, for the tests); not yet run on a GPU.
- ``mamba_ssm``'s fused CUDA kernel, where it is installed (it cannot be installed without network access: it is
  built from source, and its build downloads or compiles CUDA code; ``auto`` never needs it).

``selective_scan(..., backend=)`` chooses: ``"auto"`` takes mamba_ssm's kernel on CUDA tensors with d_state ≤ 256
where it imports, else the chunked scan: on CPU with the compiled step where inductor can build it (a C++ compiler
at run time), else — with one warning per process saying so — with the tree step; on CUDA without mamba_ssm with
the tree step. ``"compiled"``/``"tree"`` force the chunked scan's step (``"torch"`` is ``"tree"``), ``"fused"``
mamba_ssm's kernel, ``"triton"`` the Triton kernels. The scan computes in float32 (float64 stays float64) with
autocast off and returns u's dtype. The mamba_ssm and Triton calls are wrapped in ``torch.compiler.disable`` (the
declared graph breaks, on CUDA only); the chunked scan is a custom op, opaque to ``torch.compile`` without a break.
"""

from __future__ import annotations

import warnings

import torch

from . import BACKENDS, autocast_off, compute_dtype, kernel_importable, optional_kernel, use_fused
from .selective_scan_chunked import compiled_scan_available, selective_scan_torch
from .selective_scan_reference import selective_scan_ref

__all__ = [
    "SCAN_BACKENDS",
    "fused_selective_scan_available",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_torch",
    "triton_selective_scan_available",
]

MAX_FUSED_D_STATE = 256
SCAN_BACKENDS = (*BACKENDS, "compiled", "tree", "triton")

# the optional kernels (module, name): mamba_ssm's imports where mamba-ssm was built for CUDA (from 2.3 on, with
# MAMBA_KEEP_CUDA_BUILD), the Triton one where the triton package imports
_KERNELS = {
    "fused": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "triton": (f"{__package__}.selective_scan_triton", "selective_scan_triton"),
}


def _kernel(name: str):
    """The optional kernel ``name`` (``"fused"``: mamba_ssm's; ``"triton"``), or None where it does not import."""
    return optional_kernel(*_KERNELS[name])


def _importable(name: str) -> bool:
    """Whether the kernel ``name`` imports: a constant for ``torch.compile`` (``ops.kernel_importable``)."""
    return kernel_importable(*_KERNELS[name])


def fused_selective_scan_available() -> bool:
    return torch.cuda.is_available() and _importable("fused")


def triton_selective_scan_available() -> bool:
    return torch.cuda.is_available() and _importable("triton")


@torch.compiler.disable
def _selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return _kernel("fused")(
        u.contiguous(),
        delta.contiguous(),
        A.contiguous(),
        B.contiguous(),
        C.contiguous(),
        D=None if D is None else D.float(),
        z=None if z is None else z.contiguous(),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus,
    )


@torch.compiler.disable
def _selective_scan_triton(*args):
    return _kernel("triton")(*args)


def _selective_scan_compiled(*args):
    return selective_scan_torch(*args, compiled=True)


def _triton_runs_on(u: torch.Tensor) -> bool:
    """Whether the Triton kernels take u: on CUDA, or on the CPU in the Triton interpreter (tests)."""
    if not _importable("triton"):
        return False
    from .selective_scan_triton import INTERPRETED

    return u.is_cuda or INTERPRETED


@torch.compiler.assume_constant_result
def _compiled_step_missing(device_type: str) -> str:
    """Why the compiled step cannot be built on ``device_type``, or "" where it can: a constant for
    ``torch.compile``, which would otherwise trace into the compiler probe."""
    return compiled_scan_available(device_type) or ""


_warned_no_compiler: set[str] = set()


def _compiled_or_tree(u: torch.Tensor, forced: bool):
    """The chunked scan with the compiled step where inductor can build it; else, under ``auto``, the tree step and
    one warning per process and device type (``forced``: raise instead)."""
    device = u.device.type
    reason = _compiled_step_missing(device)
    if not reason:
        return _selective_scan_compiled
    if forced:
        raise RuntimeError(f"backend='compiled' needs inductor to build the chunk step on {device}: {reason}")
    if device not in _warned_no_compiler:
        _warned_no_compiler.add(device)
        warnings.warn(
            f"selective scan: the compiled chunk step cannot be built here ({reason}); the slower tree step runs "
            "instead. Install a C++ compiler (e.g. g++) for the fused CPU scan.",
            stacklevel=4,
        )
    return selective_scan_torch


def _choose(backend: str, u: torch.Tensor, A: torch.Tensor):
    """The scan function for ``backend`` (module docstring: dispatch)."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"Unknown selective-scan backend {backend!r}; use one of {', '.join(SCAN_BACKENDS)}.")
    if backend == "triton":
        if not _triton_runs_on(u):
            triton = "importable" if _importable("triton") else "not importable"
            raise RuntimeError(
                "backend='triton' needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1) and triton; got "
                f"{u.device.type} tensors, triton {triton}"
            )
        return _selective_scan_triton
    if backend in ("tree", "torch"):
        return selective_scan_torch
    if backend == "compiled":
        return _compiled_or_tree(u, forced=True)
    fusable = u.is_cuda and A.shape[-1] <= MAX_FUSED_D_STATE and _importable("fused")
    mamba_ssm = "importable" if _importable("fused") else "not importable"
    needs = (
        "CUDA tensors, d_state <= 256 and mamba_ssm (selective_scan_fn); got "
        f"{u.device.type} tensors, d_state {A.shape[-1]}, mamba_ssm {mamba_ssm}"
    )
    if use_fused(backend, "selective-scan", fusable, needs):
        return _selective_scan_fused
    # on CUDA "auto" takes neither Triton path (the Triton kernels and the compiled step's Triton code have not yet
    # run on a GPU: tools/gpu_check.py's selective_scan row), but the verified tree step
    return selective_scan_torch if u.is_cuda else _compiled_or_tree(u, forced=False)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The S6 scan in float32 (float64 kept) with autocast off; returns u's dtype. See the module docstring."""
    scan = _choose(backend, u, A)
    dtype = u.dtype
    compute = compute_dtype(dtype)
    with autocast_off(u.device.type):
        args = [None if t is None else t.to(compute) for t in (u, delta, A, B, C, D, z, delta_bias)]
        out = scan(*args, delta_softplus)
    return out.to(dtype)
