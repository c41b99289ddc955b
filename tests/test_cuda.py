"""The CUDA path, on a GPU (marker ``cuda``: skipped without one; ``tools/gpu_check.py`` runs them first).

Every mixer under bf16 and fp16 autocast against its float32 CPU result, the scan backends against their
references on CUDA, channels_last, ``torch.compile``, fp16 with a GradScaler, one DDP step over NCCL (world size
1) and a short train -> resume -> eval of ``train.py`` on fake data.

Error bounds are relative (``‖a - b‖ / ‖b‖`` over the whole tensor): autocast runs matmuls and convolutions in
16-bit with float32 accumulation (bf16 keeps 8 mantissa bits, fp16 11), while FFTs and scans stay in float32; a
mixer is a few such layers, so outputs must agree to 2 % in bf16 and 0.5 % in fp16, gradients (one more layer of
rounding) to 5 % and 1 %. A wrong kernel, a dtype slip or a device mix-up is off by far more. Float32 results are
compared at ``FLOAT32_BOUND`` with TF32 off (``ieee_float32``, for every test here): cuDNN's convolutions use TF32
(10 mantissa bits) by default, and ``train.py`` turns it on for matmuls too, which alone moves a result by ~3e-4.

The CPU side of every comparison is a copy (``leaves``): ``t.to("cpu")`` of a CPU tensor returns ``t`` itself, so
marking it ``requires_grad`` would turn the device copy made from it into a non-leaf without ``.grad``.
``tests/test_cuda_helpers.py`` checks both helpers on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from mixerzoo import train
from mixerzoo.mixers import create_mixer, list_mixers
from mixerzoo.mixers.ops import selective_scan as s6
from mixerzoo.mixers.ops import ssd as ssd_ops
from tests.conftest import build_model

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
AUTOCAST_BOUNDS = {torch.bfloat16: (2e-2, 5e-2), torch.float16: (5e-3, 1e-2)}  # (output, gradient)
FLOAT32_BOUND = 1e-4  # float32 against float32 (another kernel, layout or device), TF32 off


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls (IEEE float32), cuDNN's autotuner off; restored after."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = flags


@pytest.fixture(autouse=True)
def _ieee_float32() -> Iterator[None]:
    with ieee_float32():
        yield


def leaves(tensors: Sequence[torch.Tensor], device: Any, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Fresh copies of ``tensors`` on ``device`` (in ``dtype``) that are leaves requiring gradients; the inputs
    themselves stay untouched (``t.to(device)`` would return ``t`` itself where nothing changes)."""
    return [t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_(True) for t in tensors]


def outputs_and_grads(
    fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor], device: Any, dtype: torch.dtype | None = None
) -> list[torch.Tensor]:
    """``fn``'s output and the gradients of ``sum(fn(...)²)`` with respect to each input, computed on ``device``."""
    inputs = leaves(tensors, device, dtype)
    out = fn(*inputs)
    out.square().sum().backward()
    return [out, *(t.grad for t in inputs)]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double().cpu() - expected.double().cpu()).norm() / expected.double().norm().clamp_min(1e-12)).item()


def forward_backward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and all parameter gradients (one flat vector) of ``sum(module(x) * weight)``.

    Parameter gradients are compared as one vector: some are zero in exact arithmetic (a bias followed by a
    norm layer), so a per-tensor relative error would only measure rounding noise against zero."""
    x = x.detach().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    (out.float() * weight).sum().backward()
    grads = [p.grad.float().flatten() for p in module.parameters() if p.grad is not None]
    flat = torch.cat(grads) if grads else torch.zeros(0, device=x.device)
    return out.float(), x.grad.float(), flat


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list_mixers())
def test_mixer_under_autocast_on_cuda_matches_float32_on_cpu(name: str, dtype: torch.dtype) -> None:
    mixer = create_mixer(name, 64, context={"grid": (8, 8)}).train()
    x, weight = torch.randn(2, 8, 8, 64), torch.randn(2, 8, 8, 64)
    out, x_grad, param_grads = forward_backward(mixer, x, weight)
    on_gpu = copy.deepcopy(mixer).to(CUDA)
    with torch.autocast(CUDA.type, dtype=dtype):
        out_gpu, x_grad_gpu, param_grads_gpu = forward_backward(on_gpu, x.to(CUDA), weight.to(CUDA))
    out_bound, grad_bound = AUTOCAST_BOUNDS[dtype]
    assert relative_error(out_gpu, out) < out_bound
    assert torch.isfinite(x_grad_gpu).all() and relative_error(x_grad_gpu, x_grad) < grad_bound
    assert param_grads_gpu.shape == param_grads.shape and torch.isfinite(param_grads_gpu).all()
    if param_grads.numel():
        assert relative_error(param_grads_gpu, param_grads) < grad_bound


@pytest.mark.parametrize("backend", ["torch", "fused", "triton"])
def test_selective_scan_on_cuda_matches_the_reference(backend: str) -> None:
    if backend == "fused" and not s6.fused_selective_scan_available():
        pytest.skip("mamba_ssm's selective_scan_fn is not importable")
    if backend == "triton" and not s6.triton_selective_scan_available():
        pytest.skip("triton is not importable")
    b, d, n, length, groups = 2, 32, 16, 200, 2
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) - 0.5
    B, C = (torch.randn(b, groups, n, length, generator=g) for _ in range(2))
    D, delta_bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    expected = outputs_and_grads(partial(s6.selective_scan_ref, delta_softplus=True), inputs, "cpu")
    actual = outputs_and_grads(partial(s6.selective_scan, delta_softplus=True, backend=backend), inputs, CUDA)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None and relative_error(a, e) < FLOAT32_BOUND, f"tensor {i}"


def test_triton_selective_scan_equals_the_torch_scan_at_vim2_t_stage_1_size() -> None:
    """ViM2-T's first stage: b 2, 4 scan directions x 192 channels as 4 B/C groups, 56² = 3136 tokens, d_state 16;
    output and every gradient of the Triton kernels against the chunked torch scan, both on the GPU in float32."""
    if not s6.triton_selective_scan_available():
        pytest.skip("triton is not importable")
    b, d, n, length, groups = 2, 768, 16, 3136, 4
    g = torch.Generator(device=CUDA).manual_seed(0)
    u, delta, z = (torch.randn(b, d, length, generator=g, device=CUDA) for _ in range(3))
    A = -torch.rand(d, n, generator=g, device=CUDA) * 15 - 1  # -exp(A_log) with the S4D-real init's range
    B, C = (torch.randn(b, groups, n, length, generator=g, device=CUDA) for _ in range(2))
    D, delta_bias = torch.randn(d, generator=g, device=CUDA), torch.randn(d, generator=g, device=CUDA) - 4
    weight = torch.randn(b, d, length, generator=g, device=CUDA)
    results = {}
    for backend in ("torch", "triton"):
        inputs = leaves((u, delta, A, B, C, D, z, delta_bias), CUDA)
        out = s6.selective_scan(*inputs, delta_softplus=True, backend=backend)
        (out * weight).sum().backward()
        results[backend] = [out, *(t.grad for t in inputs)]
    for i, (actual, expected) in enumerate(zip(results["triton"], results["torch"])):
        assert torch.isfinite(actual).all() and relative_error(actual, expected) < FLOAT32_BOUND, f"tensor {i}"


@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_ssd_on_cuda_matches_the_sequential_reference(backend: str) -> None:
    if backend == "fused" and not ssd_ops.fused_ssd_available():
        pytest.skip("mamba_ssm's mamba_chunk_scan_combined is not importable")
    b, length, h, p, g, n = 2, 96, 4, 16, 2, 16
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, length, h, p, generator=gen)
    dt = F.softplus(torch.randn(b, length, h, generator=gen))
    A = -torch.rand(h, generator=gen) - 0.5
    B, C = (torch.randn(b, length, g, n, generator=gen) for _ in range(2))
    inputs = [x, dt, A, B, C]
    expected = outputs_and_grads(ssd_ops.ssd_sequential, inputs, "cpu")
    actual = outputs_and_grads(partial(ssd_ops.ssd, chunk_size=32, backend=backend), inputs, CUDA)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None and relative_error(a, e) < FLOAT32_BOUND, f"tensor {i}"


@pytest.mark.parametrize("mixer", ["pooling", "attention", "aff", "hydra", "mamba_mixer"])
def test_channels_last_equals_contiguous_on_cuda(mixer: str) -> None:
    model = build_model("metaformer_s12", mixer=mixer, num_classes=10).to(CUDA).eval()
    x = torch.randn(2, 3, 64, 64, device=CUDA)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    assert relative_error(actual, expected) < FLOAT32_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["pooling", "attention", "hydra", "mamba_mixer"])
def test_compiled_model_equals_eager_on_cuda(mixer: str) -> None:
    """One block per stage: what compiles is the mixer's code, the same in every block (and compiling takes a
    quarter of the full depth's time)."""
    torch._dynamo.reset()
    model = build_model("metaformer_s12", mixer=mixer, num_classes=10, depths=[1, 1, 1, 1]).to(CUDA).train()
    x, target = torch.randn(2, 3, 64, 64, device=CUDA), torch.randint(0, 10, (2,), device=CUDA)
    compiled = torch.compile(model)
    outputs, grads = [], []
    for run in (model, compiled):
        model.zero_grad(set_to_none=True)
        out = run(x)
        F.cross_entropy(out, target).backward()
        outputs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert relative_error(outputs[1], outputs[0]) < FLOAT32_BOUND and relative_error(grads[1], grads[0]) < 1e-3


def test_fp16_with_a_grad_scaler_trains() -> None:
    model = build_model("metaformer_tiny", num_classes=10, in_chans=1).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(CUDA.type)
    before = [p.detach().clone() for p in model.parameters()]
    x, target = torch.randn(8, 1, 32, 32, device=CUDA), torch.randint(0, 10, (8,), device=CUDA)
    for _ in range(5):
        with torch.autocast(CUDA.type, dtype=torch.float16):
            loss = F.cross_entropy(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    assert torch.isfinite(loss) and scaler.get_scale() > 0
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_ddp_step_over_nccl_equals_a_plain_step() -> None:
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    model = build_model("metaformer_tiny", num_classes=10, in_chans=1).to(CUDA)
    plain = copy.deepcopy(model)
    x, target = torch.randn(8, 1, 32, 32, device=CUDA), torch.randint(0, 10, (8,), device=CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        F.cross_entropy(ddp(x), target).backward()
    finally:
        dist.destroy_process_group()
    F.cross_entropy(plain(x), target).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def _compose(output_dir: Path, *overrides: str) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", *overrides])


def test_train_resume_eval_on_fake_data(tmp_path: Path) -> None:
    """runtime=gpu (bf16, channels_last) with EMA: 1 epoch, resume to 2 epochs, then eval_only on the result."""
    common = ["runtime=gpu", "data=fake", "data.img_size=32", "data.num_classes=10", "data.num_workers=2"]
    common += ["data.fake_train_size=128", "data.fake_val_size=64", "batch_size=32", "ema.enabled=true"]
    common += ["model.mixer=sepconv", "logger.progress_bar=false"]
    train.run(_compose(tmp_path, *common, "epochs=1"))
    train.run(_compose(tmp_path, *common, "epochs=2", "resume=auto"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["precision"] == "bf16" and summary["epochs_completed"] == 2
    ckpt = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    top1 = train.run(_compose(tmp_path / "eval", *common, "eval_only=true", f"resume={tmp_path / 'last.pth'}"))
    # the same weights on the same images (cuDNN may pick another algorithm: allow one of the 64 images to flip)
    assert top1 == pytest.approx(summary["final_top1_model"], abs=100 / 64 + 1e-6)
