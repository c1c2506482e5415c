"""Inference benchmark of ASUKA-FLUX against FLUX.1-Fill-dev (``scripts/benchmark.py task=inference
model=flux_fill|flux_tiny``).

Both run on the SAME transformer, AE and scheduler objects (built once, random weights at the released sizes for
``flux_fill``, the tiny test parts for ``flux_tiny``): ASUKA-FLUX is :class:`AsukaFluxFillPipeline` (MAE + both
alignment heads once per image, then sampling), FLUX.1-Fill-dev is diffusers' ``FluxFillPipeline`` fed stored
``prompt_embeds`` (no text encoders). The ratio of their median times is ASUKA's cost over the backbone.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxFillPipeline, FluxTransformer2DModel
from omegaconf import DictConfig, OmegaConf

from asuka.benchmark import models as bm
from asuka.benchmark.timing import time_runs
from asuka.models.alignment import AlignmentModule
from asuka.models.backbones.flux import (FLUX_SCHEDULER_CONFIG, GUIDANCE, FluxComponents, FluxConditions,
                                        build_tiny_flux)
from asuka.utils.errors import ConfigError

FLUX_MODELS = ("flux_fill", "flux_tiny")  # benchmark model names = their configs/model/<name>.yaml
# black-forest-labs/FLUX.1-Fill-dev transformer/config.json and vae/config.json (the keys that shape the models).
FLUX_FILL_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1, "in_channels": 384, "out_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
FLUX_AE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 16, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
}
BASELINE_TOKENS = 512  # our choice: FLUX's default T5 length (max_sequence_length) for the baseline's prompt


def build_flux(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> FluxComponents:
    """Random FLUX.1-Fill parts: at the released sizes, built directly on ``device`` in ``dtype`` (12B parameters:
    no float32 copy on the CPU), or the tiny test parts."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if name == "flux_tiny":
        comps = build_tiny_flux(seed)
    else:
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            default = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                comps = FluxComponents(FluxTransformer2DModel(**FLUX_FILL_TRANSFORMER_CONFIG),
                                       AutoencoderKL(**FLUX_AE_CONFIG),
                                       FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG))
            finally:
                torch.set_default_dtype(default)
    for module in (comps.transformer, comps.vae):
        module.requires_grad_(False).eval()
        if next(module.parameters()).dtype != dtype or next(module.parameters()).device != device:
            module.to(device=device, dtype=dtype)
    return comps


def inference(cfg: DictConfig, env: Any) -> dict[str, Any]:
    """ASUKA-FLUX vs FLUX.1-Fill-dev at ``env.size`` with ``env.steps`` Euler steps, same seed and inputs."""
    from asuka.benchmark.common import finite, inference_inputs, place
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline

    if env.size % 16:
        raise ConfigError("size", f"FLUX needs a multiple of 16, got {env.size}")
    model_cfg = bm.model_config(env.model)
    t0 = time.perf_counter()
    comps = build_flux(env.model, env.device, env.dtype, env.seed)
    mae = place(bm.build_mae(model_cfg, env.seed).requires_grad_(False).eval(), env.device, env.dtype)
    heads = {}
    for name in ("alignment", "alignment_clip"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(env.seed)
            heads[name] = place(AlignmentModule(**OmegaConf.to_container(model_cfg[name])).requires_grad_(False)
                                 .eval(), env.device, env.dtype)
    shapes = (int(comps.transformer.config.joint_attention_dim), int(comps.transformer.config.pooled_projection_dim))
    tokens = (int(model_cfg.mae.img_size) // int(model_cfg.mae.patch_size)) ** 2
    null = FluxConditions.from_tensors(torch.zeros(1, tokens, shapes[0]), torch.zeros(1, shapes[1]))
    asuka = AsukaFluxFillPipeline(transformer=comps.transformer, vae=comps.vae, scheduler=comps.scheduler,
                                  conditions=null.to(env.device), mae=mae, **heads)
    flux = FluxFillPipeline(scheduler=comps.scheduler, vae=comps.vae, text_encoder=None, tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None, transformer=comps.transformer)
    for pipe in (asuka, flux):
        pipe.set_progress_bar_config(disable=True)
    build_s = time.perf_counter() - t0

    image, mask = inference_inputs(env.size, env.seed)
    prompt = torch.zeros(1, BASELINE_TOKENS, shapes[0], device=env.device, dtype=env.dtype)
    pooled = torch.zeros(1, shapes[1], device=env.device, dtype=env.dtype)
    guidance = float(model_cfg.get("guidance", GUIDANCE))
    output_type = str((cfg.get("inference") or {}).get("output_type", "np"))
    common = dict(image=image, mask_image=mask, height=env.size, width=env.size, num_inference_steps=env.steps,
                  output_type=output_type)
    outputs: dict[str, Any] = {}

    def asuka_call() -> None:
        outputs["asuka_flux"] = asuka(**common, guidance=guidance, generator=torch.Generator().manual_seed(env.seed)
                                      ).images

    def flux_call() -> None:
        outputs["flux_fill"] = flux(**common, prompt_embeds=prompt, pooled_prompt_embeds=pooled,
                                    guidance_scale=guidance, generator=torch.Generator().manual_seed(env.seed)).images

    with torch.inference_mode():
        stats = time_runs({"asuka_flux": asuka_call, "flux_fill": flux_call}, env.warmup, env.repeats, env.device)
    a, f = stats["asuka_flux"], stats["flux_fill"]
    return {
        **a.as_dict("asuka_flux_s_"), **f.as_dict("flux_fill_s_"),
        "ratio": a.median / f.median, "overhead_pct": (a.median / f.median - 1.0) * 100.0,
        "ratio_per_round": [ta / tf for ta, tf in zip(a.times, f.times)],
        "tokens": {"asuka_flux": tokens, "flux_fill": BASELINE_TOKENS}, "guidance": guidance,
        "output_type": output_type, "outputs_finite": all(finite(v) for v in outputs.values()), "build_s": build_s,
        "parameters_m": {"transformer": bm.parameter_count(comps.transformer) / 1e6,
                         "vae": bm.parameter_count(comps.vae) / 1e6, "mae": bm.parameter_count(mae) / 1e6,
                         **{k: bm.parameter_count(v) / 1e6 for k, v in heads.items()}},
    }
