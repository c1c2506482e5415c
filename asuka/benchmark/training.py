"""task=train_mae|train_align|train_decoder: one optimizer update of the real stage inside the real engine.

The stage is built from its composed config (``configs/train_*.yaml``); only the weight loaders are replaced, by random
weights of the same architecture (``model=sd15``), so nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import time
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import torch
from omegaconf import DictConfig

from asuka.benchmark import models as bm
from asuka.benchmark.common import MIXED, BenchEnv, hardware_name, place
from asuka.benchmark.timing import (count_flops, mfu, peak_bf16_flops, peak_memory, reset_peak_memory, summarize,
                                    synchronize, time_fn)
from asuka.utils.compose import compose_config
from asuka.utils.errors import AsukaError


def stage_overrides(cfg: DictConfig, env: BenchEnv) -> list[str]:
    """The stage config the benchmark times: the paper (or tiny) models, the shipped samples as data, no tracker,
    the benchmark's size and batch; then the user's ``train.stage_overrides``.

    Precision: ``dtype=auto`` keeps the stage config's ``trainer.mixed_precision`` on CUDA (what training really
    uses) and fp32 on CPU; an explicit dtype overrides it.
    """
    out = [
        f"model={bm.MODEL_CONFIG_NAMES[env.model]}",
        "dataset=samples",
        "logger=none",
        f"trainer.cpu={str(env.device.type == 'cpu').lower()}",
        f"resolution={env.size}",
        "trainer.num_workers=0",
    ]
    if str(cfg.get("dtype", "auto")) != "auto":
        out.append(f"trainer.mixed_precision={MIXED[env.dtype]}")
    elif env.device.type == "cpu":
        out.append("trainer.mixed_precision=no")
    if env.batch is not None:
        out.append(f"trainer.batch_size={env.batch}")
    if env.task == "train_decoder":
        # no latent cache on a benchmark box: every latent is encoded (the costlier case); random LPIPS trunk
        # (same compute as the VGG weights, nothing to download)
        out += ["decoder_train.latent_aug_prob=0", "decoder_train.lpips_pretrained_trunk=false"]
    train_cfg = cfg.get("train") or {}
    return out + [str(o) for o in (train_cfg.get("stage_overrides") or [])]


@contextlib.contextmanager
def random_weight_loaders(env: BenchEnv) -> Iterator[None]:
    """For ``model=sd15``, replace the weight loaders the stage modules call by random weights of the same
    architecture (same signature, same device / dtype handling); ``model=tiny`` uses the real tiny loaders."""
    if env.model != "sd15":
        yield
        return
    from asuka.models.frozen import resolve_dtype

    def load_sd(sd_cfg: Any, path: Any, device: Any = "cpu", dtype: Any = None,
                parts: tuple[str, ...] = bm.SD_PARTS) -> Any:
        sd = bm.build_sd("sd15", env.seed, tuple(parts))
        dt = resolve_dtype(dtype if dtype is not None else sd_cfg.get("dtype", "float32"))
        for module in (sd.unet, sd.vae):
            if module is not None:
                place(module, torch.device(device), dt).requires_grad_(False).eval()
        return sd

    def load_mae(cfg: Any, path: Any = None) -> Any:
        return bm.build_mae(bm.model_config("sd15"), env.seed).requires_grad_(False).eval()

    targets = {
        # the stages load SD through the backbone (asuka.models.backbones.sd15 -> asuka.models.sd.load_sd_inpaint)
        "train_align": [("asuka.models.sd", "load_sd_inpaint", load_sd),
                        ("asuka.training.align", "load_frozen_mae", load_mae),
                        ("asuka.training.align_latents", "load_sd_inpaint", load_sd)],
        "train_decoder": [("asuka.models.sd", "load_sd_inpaint", load_sd)],
    }.get(env.task, [])
    with contextlib.ExitStack() as stack:
        for module_name, name, fake in targets:
            module = importlib.import_module(module_name)
            if not hasattr(module, name):
                raise AsukaError(f"{module_name} no longer imports {name}; update asuka/benchmark/training.py")
            stack.enter_context(mock.patch.object(module, name, fake))
        yield


def _stage_module(task: str) -> Any:
    return importlib.import_module({"train_mae": "asuka.training.mae", "train_align": "asuka.training.align",
                                    "train_decoder": "asuka.training.decoder"}[task])


def _stage_class(task: str) -> type:
    module = _stage_module(task)
    return {"train_mae": getattr(module, "MaeStage", None), "train_align": getattr(module, "AlignStage", None),
            "train_decoder": getattr(module, "DecoderStage", None)}[task]


def _real_batch(stage: Any, batch_size: int) -> dict[str, Any]:
    """One batch from the stage's own dataset and collate (the shipped samples, cycled); the engine moves it."""
    dataset = stage.train_dataset()
    batch = dataset.collate([dataset[(0, i % len(dataset))] for i in range(batch_size)])
    batch.pop("bad", None)
    return batch


def _data_seconds_per_sample(stage: Any, n: int) -> float:
    """Median seconds to produce one training sample (decode, crop, mask, to tensor): one loader worker's speed.

    Measured with one torch thread, as in a DataLoader worker (PyTorch sets that in every worker).
    """
    dataset = stage.train_dataset()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for i in range(n):
            start = time.perf_counter()
            dataset[(1, i % len(dataset))]
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return summarize(times).median


def _build_align_latents(overrides: list[str], env: BenchEnv) -> Path:
    """``train.align_latents=true``: the stage-2 latent cache of the benchmark's samples, built by the real builder
    (``model=sd15``: with the random VAE) in a temporary folder, so the timed step reads latents instead of encoding.
    """
    import tempfile

    from asuka.training.align_latents import build_align_latents

    out = Path(tempfile.mkdtemp(prefix="asuka-bench-latents-"))
    precision = "float32" if env.device.type == "cpu" else "bfloat16"  # bf16 convolutions are slow on a CPU
    cache_cfg = compose_config(
        "make_align_latents", [*overrides, f"paths.align_latents={out}", "num_workers=0", f"vae_dtype={precision}"]
    )
    with random_weight_loaders(env):
        build_align_latents(cache_cfg)
    return out


def train_task(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Build the real stage inside the real engine (``asuka.training.engine.Trainer``: config checks, TF32,
    accelerate, optimizers and schedules as in training), then time ``Trainer.train_step``: one optimizer update of
    ``training_step``, backward, the all-reduce, clipping, optimizer/scheduler step and ``zero_grad``."""
    import itertools
    import tempfile

    from asuka.training.engine import Trainer

    t0 = time.perf_counter()
    train_cfg = cfg.get("train") or {}
    overrides = stage_overrides(cfg, env)
    if env.task == "train_align" and bool(train_cfg.get("align_latents", False)):
        overrides.append(f"paths.align_latents={_build_align_latents(overrides, env)}")
    stage_cfg = compose_config(env.task, overrides)
    batch_size = int(stage_cfg.trainer.batch_size)
    mixed = str(stage_cfg.trainer.mixed_precision)
    stage_cls = _stage_class(env.task)
    if stage_cls is None:
        raise AsukaError(f"the stage class for {env.task} is missing from {_stage_module(env.task).__name__}")
    torch.manual_seed(env.seed)
    with random_weight_loaders(env):
        trainer = Trainer(stage_cfg, stage_cls, Path(tempfile.mkdtemp(prefix="asuka-bench-")))  # nothing is written
    stage = trainer.stage
    batch = _real_batch(stage, batch_size)
    batches = itertools.repeat(batch)
    build_s = time.perf_counter() - t0

    if env.task == "train_decoder" and bool(train_cfg.get("gan_active", True)):
        trainer.step = int(stage_cfg.decoder_train.disc_start)  # the steady state: discriminator and adaptive weight on
    step_index = trainer.step
    losses: list[float] = []

    def step() -> None:
        losses.append(trainer.train_step(batches)["loss"])  # the engine reads the loss every step (a sync)

    for _ in range(max(1, env.warmup)):  # at least one: the first step allocates optimizer state
        step()
    synchronize(env.device)
    flops = count_flops(step)
    synchronize(env.device)
    reset_peak_memory(env.device)
    stats = time_fn(step, 0, env.repeats, env.device)
    memory = peak_memory(env.device)
    hardware = hardware_name(env.device)
    peak = peak_bf16_flops(hardware) if env.device.type == "cuda" else None
    util = mfu(flops, stats.median, peak) if mixed == "bf16" else None
    trainable = {name: bm.parameter_count(m, trainable_only=True) / 1e6 for name, m in stage.trainable.items()}
    data_s = _data_seconds_per_sample(stage, int(train_cfg.get("data_samples", 16)))
    accum = int(stage_cfg.trainer.get("grad_accum", 1))
    images_per_s = batch_size * accum / stats.median  # a step is one optimizer update over grad_accum micro-batches
    return {
        **stats.as_dict("step_s_"),
        "images_per_s": images_per_s,
        "batch_per_device": batch_size,
        "grad_accum": accum,
        "images_per_step": batch_size * accum,
        "flops_per_image": flops / (batch_size * accum),
        "resolution": int(stage_cfg.resolution),
        "mixed_precision": mixed,
        "flops_per_step": flops,
        "achieved_tflops": flops / stats.median / 1e12,
        "peak_bf16_flops": peak,
        "mfu": util,
        "mfu_note": None if util is not None else ("MFU needs a CUDA device in the peak table and bf16"
                                                   if env.device.type == "cuda" else "no GPU: MFU is null"),
        **memory,
        "step_index": step_index,
        "losses_finite": all(math.isfinite(v) for v in losses),
        "trainable_parameters_m": trainable,
        "data_s_per_sample": data_s,
        "data_workers_needed": images_per_s * data_s,
        "build_s": build_s,
        "stage_overrides": overrides,
    }
