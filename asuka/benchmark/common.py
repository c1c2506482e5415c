"""What every benchmark task shares: the resolved settings (``BenchEnv`` from ``configs/benchmark.yaml``), the
inference inputs and small placement / naming helpers. Below every task module, so none imports another's file."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig

from asuka.benchmark import models as bm
from asuka.utils.errors import ConfigError

TASKS = ("inference", "train_mae", "train_align", "train_decoder", "masks", "data", "largen_data")
# The paper's setting of each task, used when size / steps are not given (data: each stage at its own resolution).
DEFAULT_SIZE = {"inference": 512, "train_mae": 256, "train_align": 512, "train_decoder": 256, "masks": 512,
                "data": 256, "largen_data": 512}
DEFAULT_STEPS = 50  # DDIM steps (spec 7)
# inference with model=sd15 on a CPU and no size / steps given: the CPU target's setting (a few minutes), not the
# GPU one (512 px, 50 steps: most of an hour on a CPU)
CPU_INFERENCE_SIZE, CPU_INFERENCE_STEPS = 256, 10
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
MIXED = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class BenchEnv:
    """The resolved run settings every task reads."""

    task: str
    model: str
    device: torch.device
    dtype: torch.dtype
    size: int
    steps: int
    batch: int | None
    warmup: int
    repeats: int
    seed: int
    clock: str = "wall"  # "wall" (perf_counter) or "cpu" (this process's CPU time)


def resolve_env(cfg: DictConfig) -> BenchEnv:
    """Check the keys of ``configs/benchmark.yaml`` and fill the ``auto`` / ``null`` ones."""
    task = str(cfg.task)
    if task not in TASKS:
        raise ConfigError("task", f"unknown task '{task}', expected one of {', '.join(TASKS)}")
    model = bm.check_model_name(str(cfg.model))
    device_name = str(cfg.device)
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name not in ("cpu", "cuda") and not device_name.startswith("cuda:"):
        raise ConfigError("device", f"unknown device '{device_name}', expected auto, cpu or cuda")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "cuda asked for, but torch.cuda.is_available() is False on this machine")
    device = torch.device(device_name)
    dtype_name = str(cfg.dtype)
    if dtype_name == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif dtype_name in _DTYPES:
        dtype = _DTYPES[dtype_name]
    else:
        raise ConfigError("dtype", f"unknown dtype '{dtype_name}', expected auto, float32, bfloat16 or float16")
    cpu_sd15 = task == "inference" and model == "sd15" and device.type == "cpu"
    size = int(cfg.size) if cfg.get("size") is not None else (CPU_INFERENCE_SIZE if cpu_sd15 else DEFAULT_SIZE[task])
    if size < 8 or size % 8:
        raise ConfigError("size", f"must be a positive multiple of 8 (the VAE factor), got {size}")
    steps = int(cfg.steps) if cfg.get("steps") is not None else (CPU_INFERENCE_STEPS if cpu_sd15 else DEFAULT_STEPS)
    clock = str(cfg.get("clock", "auto"))
    if clock not in ("auto", "wall", "cpu"):
        raise ConfigError("clock", f"must be auto, wall or cpu, got '{clock}'")
    if clock == "auto":  # on a shared CPU, this process's CPU time does not count the other jobs
        clock = "cpu" if device.type == "cpu" else "wall"
    batch = int(cfg.batch) if cfg.get("batch") is not None else None
    repeats, warmup = int(cfg.repeats), int(cfg.warmup)
    if repeats < 1 or warmup < 0 or steps < 1 or (batch is not None and batch < 1):
        raise ConfigError("repeats", "repeats, steps and batch must be >= 1 and warmup >= 0")
    return BenchEnv(task, model, device, dtype, size, steps, batch, warmup, repeats, int(cfg.seed), clock)


def inference_inputs(size: int, seed: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A noise image and a centred box mask covering a quarter of it (white = hole), as PIL like a user passes."""
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return image, PIL.Image.fromarray(mask)


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to the device, casting only when the dtype differs (diffusers warns on every ``.to(dtype=...)``)."""
    current = next(module.parameters()).dtype
    return module.to(device=device) if current == dtype else module.to(device=device, dtype=dtype)


def finite(images: Any) -> bool:
    """Pipeline output (tensor, array, or a list of PIL images) holds no NaN or inf."""
    if isinstance(images, (list, tuple)):
        return all(finite(i) for i in images)
    arr = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images, dtype=np.float32))
    return bool(torch.isfinite(arr.float()).all())


def hardware_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
