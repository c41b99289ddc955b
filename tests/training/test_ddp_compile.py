"""DDP and ``torch.compile`` together, in PyTorch's order: the network is wrapped in DDP first and the wrapper is
compiled, so DDP's hooks still bucket the gradients and all-reduce each bucket during the backward (compile's DDP
optimiser splits the graph at the bucket boundaries). Compiling first and wrapping the compiled module hides the
parameters' gradients behind one opaque backward: nothing can overlap. Two real gloo ranks, forked from this process
with torchrun's environment, run the training library's own set-up and one epoch."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from torch.nn.parallel import DistributedDataParallel

from mixerzoo import train
from mixerzoo.training.loop import fit
from mixerzoo.training.state import build_train_state

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
WORLD_SIZE = 2
# the digits data, 2 updates of 2 micro-steps (``no_sync``, then the all-reduce) of 16 images per rank, and a compile
# that only traces (backend "eager": seconds on a CPU)
OVERRIDES = ["runtime=cpu", "runtime.compile=true", "runtime.compile_backend=eager", "runtime.num_threads=1"]
OVERRIDES += ["batch_size=16", "optim.grad_accum_steps=2", "limit_train_batches=4", "limit_val_batches=1"]
OVERRIDES += ["epochs=1", "aug.no_aug=true"]
OVERRIDES += ["logger.progress_bar=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_as_rank(rank: int, port: int, folder: Path) -> None:
    """A child process with torchrun's environment: the library's set-up (which joins the gloo group), the model it
    builds, one epoch; leaves how the model is wrapped and its final weights (or the exception) in ``folder``."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), LOCAL_WORLD_SIZE="2")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"output_dir={folder / 'run'}", *OVERRIDES])
        evaluation, train_ds = train.setup(cfg)
        state = build_train_state(cfg, evaluation, train_ds)
        compiled = state.model
        wrapped = getattr(compiled, "_orig_mod", None)
        result: Any = {
            "compiled": isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule),
            "compiles_the_ddp_wrapper": isinstance(wrapped, DistributedDataParallel) and wrapped.module is state.net,
            "evaluates_the_compiled_net": getattr(state.eval_model, "_orig_mod", None) is state.net,
            "before": torch.cat([p.detach().flatten() for p in state.net.parameters()]).clone(),
        }
        fit(cfg, state)
        result["after"] = torch.cat([p.detach().flatten() for p in state.net.parameters()])
        result = ("ok", result)
    except Exception as err:
        result = ("raised", err)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (folder / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


@pytest.mark.slow
def test_ddp_wraps_the_network_and_the_wrapper_is_compiled(tmp_path: Path) -> None:
    """Each rank trains ``compile(DDP(net))`` and evaluates ``compile(net)``; after the epoch the two replicas hold
    the same weights, which moved (the gradients were all-reduced through the compiled wrapper)."""
    # forkserver: ranks forked from a fresh server process. Forked from this one, they fail as soon as an earlier
    # test here has run autograd ("Unable to handle autograd's threading in combination with fork-based
    # multiprocessing")
    port, context = _free_port(), multiprocessing.get_context("forkserver")
    ranks = [context.Process(target=_train_as_rank, args=(rank, port, tmp_path)) for rank in range(WORLD_SIZE)]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + 240
    for process in ranks:
        process.join(max(deadline - time.monotonic(), 0))
    hung = [rank for rank, process in enumerate(ranks) if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert not hung, f"rank(s) {hung} still running after 240 s"
    results = [pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes()) for rank in range(WORLD_SIZE)]
    for outcome, result in results:
        assert outcome == "ok", result
        assert result["compiled"] and result["compiles_the_ddp_wrapper"] and result["evaluates_the_compiled_net"]
        assert not torch.equal(result["after"], result["before"])
    torch.testing.assert_close(results[0][1]["after"], results[1][1]["after"], rtol=0, atol=1e-6)
