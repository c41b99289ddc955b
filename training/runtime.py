"""The process a training job runs in: device, process group (torchrun / Slurm), threads, determinism, seeds, and
the autocast context of the configured precision."""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from timm.utils.distributed import init_distributed_device_so

__all__ = ["autocast", "setup_runtime"]

_logger = logging.getLogger("train")


def setup_runtime(cfg: DictConfig) -> dict[str, Any]:
    """Device, process group (under torchrun or Slurm), threads, determinism and seeds."""
    device = cfg.runtime.device
    if device == "auto":  # the default, also of runtime=gpu (every experiment): CUDA if there is a GPU
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and (cfg.runtime.precision != "fp32" or cfg.runtime.channels_last):
            _logger.warning(
                f"runtime.device=auto: no CUDA device, running on the CPU with precision={cfg.runtime.precision}"
                f"{', channels_last' if cfg.runtime.channels_last else ''} (set for GPUs; slow here). For a quick "
                "check add debug=smoke; for CPU training runtime=cpu (fp32)."
            )
    info = init_distributed_device_so(device, dist_backend=cfg.runtime.distributed.backend)
    info["device"] = torch.device(info["device"])
    info["primary"] = info["global_rank"] == 0
    if cfg.runtime.num_threads:
        torch.set_num_threads(cfg.runtime.num_threads)
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif info["device"].type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = cfg.seed + info["global_rank"]  # different augmentation per rank; DDP broadcasts rank 0's weights
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return info


def autocast(cfg: DictConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.runtime.precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.runtime.precision]
    return torch.autocast(device.type, dtype=dtype)
