"""train.py's loop is device-clean and has no host sync between forward and backward, proven on the CPU.

The whole job runs with the model and every batch on the ``meta`` device (shapes, no values) under a dispatch mode
that (1) fails on any op that mixes devices, e.g. a CPU tensor stacked with device tensors (the evaluate crash a
GPU would have hit), (2) records every read of a device value on the host (``.item()``, ``.tolist()``, ``float()``,
a copy to the CPU), answering it with zeros so the loop goes on, and (3) sees where those reads fall relative to
the forward and backward passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mixerzoo import train
from mixerzoo.mixers import create_mixer, list_mixers
from mixerzoo.training import loop

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
META = torch.device("meta")
ZOO_MODULES = ["affnet_family", "hydra_family", "metaformer_baselines", "stripmlp_family", "vim2_family"]


class MetaDeviceAudit(TorchDispatchMode):
    """Events in order: ``("read", op)`` for a host read of a meta tensor, ``("mixed", op, devices)`` for an op
    whose tensors sit on more than one device. Host reads of meta tensors return zeros (meta has no values)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[Any, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if "meta" in devices and len(devices) > 1 and func is not torch.ops.aten._to_copy.default:
            self.events.append(("mixed", str(func), sorted(devices)))
            raise RuntimeError(f"{func} mixes devices {sorted(devices)}")
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device == META:
            self.events.append(("read", str(func)))
            return False if args[0].dtype == torch.bool else 0.0 if args[0].is_floating_point() else 0
        to_host = func is torch.ops.aten._to_copy.default and str(kwargs.get("device")) == "cpu"
        if to_host and args[0].device == META:
            self.events.append(("read", str(func)))
            return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        return func(*args, **kwargs)

    def mark(self, name: str) -> None:
        self.events.append(("mark", name))


class Marked(nn.Module):
    """The model, marking the end of every training forward in the audit's event list."""

    def __init__(self, model: nn.Module, audit: MetaDeviceAudit) -> None:
        super().__init__()
        self.model, self.audit = model, audit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.training:
            self.audit.mark("forward")
            out.register_hook(lambda grad: self.audit.mark("backward"))  # runs when the backward reaches it
        return out

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def compose_train(output_dir: Path, *overrides: str) -> Any:
    tiny = ["batch_size=16", "limit_train_batches=4", "limit_val_batches=2", "logger.progress_bar=false"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"output_dir={output_dir}", *tiny, *overrides])


def run_on_meta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str, mark_evaluation: bool = False
) -> tuple[MetaDeviceAudit, dict[str, Any]]:
    """``train.run`` with the model and the batches on the meta device, under the audit."""
    audit = MetaDeviceAudit()
    setup_runtime, build_model, evaluate = train.setup_runtime, train.build_model, loop.evaluate

    def setup_on_meta(cfg: Any) -> dict[str, Any]:
        return {**setup_runtime(cfg), "device": META}

    def marked_evaluate(*args: Any) -> Any:
        audit.mark("evaluate")
        return evaluate(*args)

    monkeypatch.setattr(train, "setup_runtime", setup_on_meta)
    monkeypatch.setattr(train, "build_model", lambda spec, data: Marked(build_model(spec, data), audit))
    monkeypatch.setattr(loop, "evaluate", marked_evaluate)
    monkeypatch.setattr(train, "evaluate", marked_evaluate)
    cfg = compose_train(tmp_path, *overrides)
    with audit:
        train.run(cfg)
    return audit, torch.load(tmp_path / "last.pth", map_location="meta", weights_only=True)


def reads_per_update(events: list[tuple[Any, ...]]) -> list[int]:
    """Host reads after each backward, up to the next mark (forward or evaluation): the update's own reads."""
    counts: list[int] = []
    counting = False
    for event in events:
        if event[0] == "mark":
            counting = event[1] == "backward"
            counts += [0] if counting else []
        elif event[0] == "read" and counting:
            counts[-1] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param([], id="default"),
        pytest.param(["aug=deit", "data.in_chans=3", "data.mean=[0.5,0.5,0.5]", "data.std=[0.5,0.5,0.5]"], id="deit"),
        pytest.param(["optim.grad_accum_steps=2", "optim.clip_grad=1.0", "runtime.channels_last=true"], id="accum"),
    ],
)
def test_training_and_evaluation_keep_every_tensor_on_the_model_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]
) -> None:
    """The evaluate crash (a CPU ``torch.tensor(n)`` stacked with device tensors) fails here; so would any other
    op that mixes the model's device with the CPU in the train step, the data path, Mixup/CutMix, random erasing
    on the device, clipping, the optimizer, the scheduler or the evaluation."""
    audit, ckpt = run_on_meta(tmp_path, monkeypatch, "epochs=2", *overrides)
    assert not [e for e in audit.events if e[0] == "mixed"]
    updates = 4 // (2 if "optim.grad_accum_steps=2" in overrides else 1)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * updates
    assert all(v.device == META for v in ckpt["model"].values())  # the run really was on the meta device


def test_one_host_sync_per_update_and_none_between_forward_and_backward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between each forward and its backward nothing reads a device value; an accumulation micro-step reads
    nothing; each optimizer update reads once (the loss and the stop flag together)."""
    audit, _ = run_on_meta(tmp_path, monkeypatch, "epochs=1", "optim.grad_accum_steps=2")
    events = [e for e in audit.events if e[0] in ("mark", "read")]
    inside, between = False, []
    for event in events:
        if event[0] == "mark":
            inside = event[1] == "forward"
        elif inside:
            between.append(event)
    assert between == []
    marks = [e[1] for e in events if e[0] == "mark"]
    assert marks.count("forward") == 4 and marks.count("backward") == 4 and marks.count("evaluate") == 1
    assert reads_per_update(events) == [0, 1, 0, 1]


@pytest.mark.parametrize("name", list_mixers())
def test_every_mixer_keeps_its_tensors_on_the_input_device(name: str) -> None:
    """Forward and backward of each mixer on the meta device: any tensor a forward creates on the CPU (a
    ``torch.arange``/``torch.tensor`` without ``device=``, an unregistered buffer) mixes devices and fails."""
    mixer = create_mixer(name, 32, context={"grid": (6, 6)}).to(META)
    x = torch.randn(2, 6, 6, 32, device=META, requires_grad=True)
    audit = MetaDeviceAudit()
    with audit:
        mixer(x).sum().backward()
    assert x.grad is not None and x.grad.device == META
    assert not [e for e in audit.events if e[0] == "mixed"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted({n for m in ZOO_MODULES for n in timm.list_models(module=m)}))
def test_every_zoo_model_keeps_its_tensors_on_the_input_device(name: str) -> None:
    with torch.device(META):
        model = timm.create_model(name, num_classes=10)
    size = model.pretrained_cfg["input_size"][-1]
    with MetaDeviceAudit() as audit:
        out = model(torch.randn(1, 3, size, size, device=META))
    assert out.shape == (1, 10) and out.device == META
    assert not [e for e in audit.events if e[0] == "mixed"]
