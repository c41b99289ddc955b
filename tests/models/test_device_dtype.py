"""timm's factory arguments ``device`` and ``dtype``: every zoo model, builder config, registered slot and mixer creates
each parameter and buffer where and in the dtype it is asked to, creating nothing on the CPU on the way (so a large
model builds on ``meta`` or straight on a GPU, and in bf16 without a float32 copy first)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from mixerzoo.mixers import create_channel_mixer, create_mixer, list_channel_mixers, list_mixers
from mixerzoo.mixers.matrix_mixer import STRUCTURES
from mixerzoo.mixers.registry import CHANNEL_MIXERS, MIXERS
from mixerzoo.models import build_model
from mixerzoo.models.registry import BLOCKS, DOWNSAMPLES, EXTRAS, HEADS, STEMS
from tests.conftest import MODEL_CONFIGS, ZOO_TIMM_NAMES, compose_model_config

CONTEXT = dict(grid=(4, 6), img_size=(16, 24))  # what the builder hands to grid-bound mixers


class CpuTensors(TorchDispatchMode):
    """Records every operator that produces a CPU tensor while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in outputs):
            self.ops.append(str(func))
        return out


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict([*module.named_parameters(), *module.named_buffers()])


def _assert_built_on_meta(build: Any) -> nn.Module:
    """``build()`` (given device="meta") creates no CPU tensor and leaves every tensor on meta."""
    with CpuTensors() as record:
        module = build()
    assert record.ops == [], f"tensors created on the CPU: {sorted(set(record.ops))}"
    assert {n: t.device.type for n, t in _tensors(module).items() if t.device.type != "meta"} == {}
    return module


def test_the_cpu_tensor_record_sees_a_stray_factory_call() -> None:
    """The recorder the meta tests rely on catches a tensor created without the requested device."""
    with CpuTensors() as record:
        nn.Parameter(torch.rand(3)).to("meta")
    assert record.ops


@pytest.mark.parametrize("name", ZOO_TIMM_NAMES)
def test_zoo_models_build_on_meta_without_a_device_context(name: str) -> None:
    model = _assert_built_on_meta(lambda: timm.create_model(name, device="meta"))
    assert model.in_chans == model.default_cfg["input_size"][0] == 3


@pytest.mark.parametrize("name", ZOO_TIMM_NAMES)
def test_zoo_models_build_in_bfloat16(name: str) -> None:
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    floats = {n: t.dtype for n, t in _tensors(model).items() if t.is_floating_point()}
    assert set(floats.values()) == {torch.bfloat16}
    # integer buffers (BatchNorm's num_batches_tracked) keep their dtype, as in nn layers
    assert {t.dtype for t in _tensors(model).values() if not t.is_floating_point()} <= {torch.int64}


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_configs_build_on_meta_in_bfloat16(name: str) -> None:
    spec = compose_model_config(name)  # configs/model/timm.yaml: a timm model (resnet18) takes them too
    model = _assert_built_on_meta(lambda: build_model(spec, device="meta", dtype=torch.bfloat16))
    assert {t.dtype for t in _tensors(model).values() if t.is_floating_point()} == {torch.bfloat16}


def test_a_bfloat16_model_runs_in_bfloat16() -> None:
    model = timm.create_model("identityformer_s12", depths=(1, 1, 1, 1), dtype=torch.bfloat16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (1, 1000)


def _mixer_specs() -> list[Any]:
    specs: list[Any] = [n for n in list_mixers() if n != "matrix_mixer"]
    for structure, cls in STRUCTURES.items():
        forms = [False] if cls.data_independent_only else [True, False]
        specs += [{"name": "matrix_mixer", "structure": structure, "data_dependent": dd} for dd in forms]
    return specs


@pytest.mark.parametrize("spec", _mixer_specs(), ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_every_token_mixer_builds_where_and_as_asked(spec: Any, dtype: torch.dtype) -> None:
    mixer = _assert_built_on_meta(lambda: create_mixer(spec, 32, device="meta", dtype=dtype, context=CONTEXT))
    assert {t.dtype for t in _tensors(mixer).values() if t.is_floating_point()} <= {dtype}


@pytest.mark.parametrize("name", list_channel_mixers())
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_every_channel_mixer_builds_where_and_as_asked(name: str, dtype: torch.dtype) -> None:
    mixer = _assert_built_on_meta(lambda: create_channel_mixer(name, 32, device="meta", dtype=dtype, context=CONTEXT))
    assert {t.dtype for t in _tensors(mixer).values() if t.is_floating_point()} <= {dtype}


@pytest.mark.parametrize(
    "registry", [MIXERS, CHANNEL_MIXERS, STEMS, DOWNSAMPLES, BLOCKS, EXTRAS, HEADS], ids=lambda r: r.kind
)
def test_every_registered_entry_takes_device_and_dtype(registry: Any) -> None:
    """The builder hands device and dtype to every slot with the rest of its context, which reaches an entry only if
    its signature names them: an entry without them would build on the CPU in float32 in silence."""
    missing = [
        n for n in registry.names() if not {"device", "dtype"} <= set(inspect.signature(registry.get(n)).parameters)
    ]
    assert missing == []


def test_reset_classifier_follows_the_model_device_dtype_and_mode() -> None:
    """As timm's ``_assert_reset_classifier_preserves_parent_device_dtype``, for a head without a norm (AFFNet's):
    after reset_classifier(0) the head holds no parameter, yet the new classifier follows the model."""
    model = timm.create_model("affnet_et", device="meta").eval()
    model.to(dtype=torch.float64)
    model.reset_classifier(0)
    model.reset_classifier(5)
    fc = model.get_classifier()
    assert (fc.weight.device.type, fc.weight.dtype, fc.training) == ("meta", torch.float64, False)
