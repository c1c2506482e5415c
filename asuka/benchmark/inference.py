"""task=inference: the sampling overhead of ASUKA over SD-1.5 inpainting on the same UNet, VAE and scheduler."""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from asuka.benchmark import models as bm
from asuka.benchmark.common import BenchEnv, finite, inference_inputs, place
from asuka.benchmark.timing import CLOCKS, count_flops, print_round, synchronize, time_fn, time_runs
from asuka.utils.errors import AsukaError, ConfigError


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
        place(module, device, dtype)
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
            decoder = place(build_decoder(built.model_cfg.decoder, sd.vae), device, dtype).eval()
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
        "outputs_finite": all(finite(v) for v in outputs.values()),
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
