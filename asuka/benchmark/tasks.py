"""The benchmark tasks: inference overhead of ASUKA over SD-inpainting, training-step throughput and MFU of the three
stages, and mask-generator speed.

Each task measures the package's real code path, not a re-implementation of it: the inference task calls
``AsukaInpaintPipeline`` and diffusers' ``StableDiffusionInpaintPipeline`` on the same UNet, VAE and scheduler; the
training tasks build the real stage (``MaeStage``, ``AlignStage``, ``DecoderStage``) from the composed stage config
and time its ``training_step`` plus the optimizer update the engine does. Only the weight loaders are replaced, by
random weights of the same architecture (``model=sd15``), so nothing is downloaded.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import sys
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from unittest import mock

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf

from asuka.benchmark import models as bm
from asuka.benchmark.timing import (
    CLOCKS,
    count_flops,
    mfu,
    peak_bf16_flops,
    peak_memory,
    print_round,
    reset_peak_memory,
    summarize,
    synchronize,
    time_fn,
    time_runs,
)
from asuka.utils.errors import AsukaError, ConfigError

TASKS = ("inference", "train_mae", "train_align", "train_decoder", "masks", "data", "largen_data")
# The paper's setting of each task, used when size / steps are not given (data: each stage at its own resolution).
DEFAULT_SIZE = {"inference": 512, "train_mae": 256, "train_align": 512, "train_decoder": 256, "masks": 512,
                "data": 256, "largen_data": 512}
DEFAULT_STEPS = 50  # DDIM steps (spec 7)
# inference with model=sd15 on a CPU and no size / steps given: the CPU target's setting (a few minutes), not the
# GPU one (512 px, 50 steps: most of an hour on a CPU)
CPU_INFERENCE_SIZE, CPU_INFERENCE_STEPS = 256, 10
STAGE_CONFIG = {"train_mae": "train_mae", "train_align": "train_align", "train_decoder": "train_decoder"}
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_MIXED = {torch.float32: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}


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


def run_task(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Dispatch to the task function; returns its figures."""
    if env.task in ("masks", "data"):  # no model: start without importing diffusers and the model packages
        from asuka.benchmark.data import data

        return {"masks": masks, "data": data}[env.task](cfg, env)
    from asuka.benchmark import flux

    if env.model in flux.FLUX_MODELS:
        if env.task == "train_align":
            from asuka.benchmark.flux_train import train_align_flux

            return train_align_flux(cfg, env)
        if env.task != "inference":
            raise ConfigError("model", f"{env.model}: no {env.task} benchmark (FLUX has the inference benchmark and "
                                       "task=train_align)")
        return flux.inference(cfg, env)
    if env.task == "largen_data":
        from asuka.benchmark.largen_data import largen_data

        return largen_data(cfg, env)
    return {"inference": inference, "train_mae": train_mae, "train_align": train_align,
            "train_decoder": train_decoder, "masks": masks}[env.task](cfg, env)


# ------------------------------------------------------------------------------------------------ inference
def inference_inputs(size: int, seed: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """A noise image and a centred box mask covering a quarter of it (white = hole), as PIL like a user passes."""
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return image, PIL.Image.fromarray(mask)


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to the device, casting only when the dtype differs (diffusers warns on every ``.to(dtype=...)``)."""
    current = next(module.parameters()).dtype
    return module.to(device=device) if current == dtype else module.to(device=device, dtype=dtype)


def _finite(images: Any) -> bool:
    """Pipeline output (tensor, array, or a list of PIL images) holds no NaN or inf."""
    if isinstance(images, (list, tuple)):
        return all(_finite(i) for i in images)
    arr = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images, dtype=np.float32))
    return bool(torch.isfinite(arr.float()).all())


def inference(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """ASUKA vs SD-1.5 inpainting sampling on the SAME UNet/VAE/scheduler, same size, steps and seed.

    Both get guidance 1 (ASUKA's setting; SD then runs no unconditional branch either) unless
    ``inference.guidance_scale`` says otherwise; SD gets fixed ``prompt_embeds`` and no text encoder, so the ratio
    isolates ASUKA's extra work: MAE prior + alignment (and, optionally, the mask-conditioned decoder).
    """
    from diffusers import StableDiffusionInpaintPipeline

    from asuka.models.sd import build_inference_scheduler
    from asuka.models.decoder import build_decoder
    from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

    icfg = cfg.get("inference") or {}
    output_type = str(icfg.get("output_type", "np"))
    guidance = float(icfg.get("guidance_scale", 1.0))
    t0 = time.perf_counter()
    built = bm.build_inference_models(env.model, env.seed)
    sd, device, dtype = built.sd, env.device, env.dtype
    for module in (sd.unet, sd.vae, built.mae, built.alignment):
        _place(module, device, dtype)
    scheduler = build_inference_scheduler(sd.scheduler.config)  # DDIM on SD's schedule, shared by both pipelines

    asuka = AsukaInpaintPipeline(vae=sd.vae, unet=sd.unet, scheduler=scheduler, mae=built.mae,
                                 alignment=built.alignment, decoder=None)
    sd_pipe = StableDiffusionInpaintPipeline(vae=sd.vae, text_encoder=None, tokenizer=None, unet=sd.unet,
                                             scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipes: dict[str, Any] = {"asuka": asuka, "sd_inpaint": sd_pipe}
    decoder_error = None
    if bool(icfg.get("with_decoder", False)):
        try:
            decoder = _place(build_decoder(built.model_cfg.decoder, sd.vae), device, dtype).eval()
            pipes["asuka_decoder"] = AsukaInpaintPipeline(vae=sd.vae, unet=sd.unet, scheduler=scheduler,
                                                          mae=built.mae, alignment=built.alignment, decoder=decoder)
        except AsukaError as exc:
            decoder_error = str(exc)
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0

    image, mask = inference_inputs(env.size, env.seed)
    width = int(sd.unet.config.cross_attention_dim)
    embeds_kind = str(icfg.get("prompt_embeds", "zeros"))
    if embeds_kind == "random":
        prompt_embeds = torch.randn((1, 77, width), generator=torch.Generator().manual_seed(env.seed))
    elif embeds_kind == "zeros":
        prompt_embeds = torch.zeros(1, 77, width)
    else:
        raise ConfigError("inference.prompt_embeds", f"must be zeros or random, got '{embeds_kind}'")
    prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)  # SD's [B, 77, 768] text context, no encoder
    common = dict(image=image, mask_image=mask, height=env.size, width=env.size,
                  num_inference_steps=env.steps, guidance_scale=guidance, output_type=output_type)
    outputs: dict[str, Any] = {}

    def call(name: str) -> Callable[[], None]:
        def fn() -> None:
            generator = torch.Generator().manual_seed(env.seed)  # the same draws in every run and pipeline
            extra: dict[str, Any] = {}
            if name == "sd_inpaint":
                extra = {"prompt_embeds": prompt_embeds, "strength": 1.0}
                if guidance > 1.0:
                    extra["negative_prompt_embeds"] = torch.zeros_like(prompt_embeds)
            outputs[name] = pipes[name](**common, **extra, generator=generator).images
        return fn

    calls = {name: call(name) for name in pipes}
    flops: dict[str, int] = {}
    warmup = env.warmup
    with torch.inference_mode():
        if bool(icfg.get("count_flops", True)):  # deterministic, unlike the times: counted in the first warm-up round
            print(f"counting FLOPs: one call of each of {', '.join(calls)}", file=sys.stderr, flush=True)
            flops = {name: count_flops(fn) for name, fn in calls.items()}
            synchronize(device)
            warmup = max(0, warmup - 1)
        stats = time_runs(calls, warmup, env.repeats, device, clock=CLOCKS[env.clock], progress=print_round)
        prior = time_fn(lambda: asuka.encode_prior(image, mask, env.size, env.size), 1, env.repeats, device,
                        clock=CLOCKS[env.clock])

    a, s = stats["asuka"], stats["sd_inpaint"]
    per_round = [ta / ts for ta, ts in zip(a.times, s.times)]
    result: dict[str, Any] = {
        **a.as_dict("asuka_s_"),
        **s.as_dict("sd_inpaint_s_"),
        "ratio": a.median / s.median,
        "overhead_pct": (a.median / s.median - 1.0) * 100.0,
        "ratio_per_round": per_round,
        "ratio_per_round_min": min(per_round),
        "ratio_per_round_max": max(per_round),
        **prior.as_dict("asuka_prior_s_"),
        "output_type": output_type,
        "guidance_scale": guidance,
        "clock": env.clock,
        "outputs_finite": all(_finite(v) for v in outputs.values()),
        "build_s": build_s,
        "parameters_m": {
            "unet": bm.parameter_count(sd.unet) / 1e6,
            "vae": bm.parameter_count(sd.vae) / 1e6,
            "mae": bm.parameter_count(built.mae) / 1e6,
            "alignment": bm.parameter_count(built.alignment) / 1e6,
        },
    }
    if flops:
        result.update({f"{name}_flops": value for name, value in flops.items()})
        result["flops_ratio"] = flops["asuka"] / flops["sd_inpaint"] if flops["sd_inpaint"] else None
    if "asuka_decoder" in stats:
        d = stats["asuka_decoder"]
        result.update(d.as_dict("asuka_decoder_s_"), ratio_with_decoder=d.median / s.median)
        result["parameters_m"]["decoder"] = bm.parameter_count(pipes["asuka_decoder"].decoder) / 1e6
    if decoder_error is not None:
        result["decoder_error"] = decoder_error
    return result


# ------------------------------------------------------------------------------------------------- training
def compose_stage_config(name: str, overrides: list[str]) -> DictConfig:
    """``configs/<name>.yaml`` composed with ``overrides``: inside a Hydra app through its compose API, else from
    the checkout's configs folder."""
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import asuka.utils.cli  # noqa: F401  (resolvers of configs/paths)

    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name=name, overrides=overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(bm.configs_dir())):
        return compose(config_name=name, overrides=overrides)


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
        out.append(f"trainer.mixed_precision={_MIXED[env.dtype]}")
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
                _place(module, torch.device(device), dt).requires_grad_(False).eval()
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
                raise AsukaError(f"{module_name} no longer imports {name}; update asuka/benchmark/tasks.py")
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
    cache_cfg = compose_stage_config(
        "make_align_latents", [*overrides, f"paths.align_latents={out}", "num_workers=0", f"vae_dtype={precision}"]
    )
    with random_weight_loaders(env):
        build_align_latents(cache_cfg)
    return out


def _train_task(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
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
    stage_cfg = compose_stage_config(STAGE_CONFIG[env.task], overrides)
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
    device_name = _device_name(env.device)
    peak = peak_bf16_flops(device_name) if env.device.type == "cuda" else None
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


def train_mae(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Stage 1: MAE fine-tuning step (75% token drop, masked MSE) at ``size`` (the MAE sees ``model.mae.img_size``)."""
    return _train_task(cfg, env)


def train_align(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Stage 2: frozen MAE prior + VAE encodes + alignment + frozen-UNet forward/backward, epsilon loss."""
    return _train_task(cfg, env)


def train_decoder(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Stage 3: jitter + VAE encode + conditioned decode + L1/LPIPS (+ PatchGAN with adaptive weight)."""
    return _train_task(cfg, env)


# ----------------------------------------------------------------------------------------------------- masks
def masks(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Masks per second of the training mixture (``configs/mask``) at ``size`` on one core, side by side with a
    LaMa-style irregular + box generator (``asuka.benchmark.lama_anchor``, ``masks.anchor``).

    Rates are counted in this process's CPU time (other jobs on a shared machine do not lower them), in
    interleaved rounds so both generators see the same machine, under two random-number regimes, each the same
    for both: ``stream`` (one generator for the whole run, as LaMa draws from the global numpy state) and
    ``seeded`` (a fresh ``sample_rng(seed, round, index)`` per mask, as our datasets seed each sample; the
    seeding's ~10 us is then counted too). ``masks_per_s_wall`` is wall-clock over the mixture alone.
    """
    from asuka.benchmark.lama_anchor import LamaStyleAnchor
    from asuka.data.masks import build_mask_generator
    from asuka.data.seeding import sample_rng

    mcfg = cfg.get("masks") or {}
    n = int(mcfg.get("n", 200))
    generator = build_mask_generator(cfg.mask, cfg.paths)
    anchor = LamaStyleAnchor(env.size) if bool(mcfg.get("anchor", True)) else None
    size = env.size
    runs = {"mixed": lambda rng: generator(rng, size, size), **({"anchor": anchor} if anchor is not None else {})}
    generator(np.random.default_rng(env.seed), size, size)  # warm-up
    rounds = max(1, min(5, n))
    cpu = {(name, regime): 0.0 for name in runs for regime in ("stream", "seeded")}
    streams = {name: np.random.default_rng([env.seed, k]) for k, name in enumerate(runs)}
    for r in range(rounds):
        chunk = range(r * n // rounds, (r + 1) * n // rounds)
        for k, (name, draw) in enumerate(runs.items()):
            start = time.process_time()
            for _ in chunk:
                draw(streams[name])
            cpu[name, "stream"] += time.process_time() - start
            start = time.process_time()
            for i in chunk:
                draw(sample_rng(env.seed + k, 0, i))
            cpu[name, "seeded"] += time.process_time() - start
    kinds: dict[str, int] = {}
    holes = []
    start = time.perf_counter()
    for i in range(n):
        out = generator(sample_rng(env.seed, 1, i), size, size)
        mask, kind = out if isinstance(out, tuple) else (out, "mixed")
        kinds[kind] = kinds.get(kind, 0) + 1
        holes.append(float(np.mean(mask)))
    wall = time.perf_counter() - start
    object_source = OmegaConf.to_container(cfg.mask.get("object_source", {}), resolve=True) or {}
    synthetic = not object_source.get("coco_instances") and not object_source.get("mask_dir")
    rate = {key: n / max(seconds, 1e-9) for key, seconds in cpu.items()}
    result = {"masks_per_s": rate["mixed", "seeded"], "masks_per_s_stream": rate["mixed", "stream"],
              "masks_per_s_wall": n / wall, "anchor_masks_per_s": None, "anchor_masks_per_s_seeded": None,
              "ratio_to_anchor": None, "ratio_to_anchor_seeded": None}
    if anchor is not None:
        result.update(anchor_masks_per_s=rate["anchor", "stream"], anchor_masks_per_s_seeded=rate["anchor", "seeded"],
                      ratio_to_anchor=rate["mixed", "stream"] / rate["anchor", "stream"],
                      ratio_to_anchor_seeded=rate["mixed", "seeded"] / rate["anchor", "seeded"])
    return {**result, "n": n, "kinds": kinds, "hole_ratio_mean": float(np.mean(holes)),
            "object_shapes": "synthetic" if synthetic else "files"}


def _device_name(device: torch.device) -> str:
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
