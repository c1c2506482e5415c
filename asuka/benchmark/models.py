"""The real architectures at the paper's sizes with random weights, built offline, for timing.

Speed does not depend on the weight values, so the benchmark needs no download: the SD-1.5 inpainting UNet and VAE
are built from the configs of the released checkpoint (``unet/config.json``, ``vae/config.json``), the MAE, the
alignment module and the decoder from ``configs/model/paper.yaml``, exactly as the training and inference code
builds them. ``model=tiny`` swaps in the tiny test models (``configs/model/tiny.yaml``, :func:`build_tiny_sd`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.utils.compose import configs_dir
from asuka.utils.errors import ConfigError

if TYPE_CHECKING:  # imported where the models are built: task=masks / data start without them
    from asuka.models.alignment import AlignmentModule
    from asuka.models.mae import MaskedAutoencoderViT
    from asuka.models.sd import SDComponents

MODELS = ("sd15", "tiny", "flux_fill", "flux_tiny")  # flux_*: task=inference only (asuka.benchmark.flux)
# benchmark ``model=`` -> the configs/model/<name>.yaml holding the MAE / alignment / decoder sizes
MODEL_CONFIG_NAMES = {"sd15": "paper", "tiny": "tiny", "flux_fill": "flux_fill", "flux_tiny": "flux_tiny"}

# runwayml / stable-diffusion-v1-5 "stable-diffusion-inpainting", unet/config.json (the keys that shape the model).
SD15_INPAINT_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

# The same checkpoint's vae/config.json (the SD-1.x VAE, 8x downsampling, 4 latent channels).
SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


def check_model_name(name: str) -> str:
    if str(name) not in MODELS:
        raise ConfigError("model", f"unknown benchmark model '{name}', expected one of {', '.join(MODELS)}")
    return str(name)


def model_config(name: str) -> DictConfig:
    """``configs/model/paper.yaml`` (``sd15``) or ``tiny.yaml``: the sizes every asuka model is built from."""
    path = configs_dir() / "model" / f"{MODEL_CONFIG_NAMES[check_model_name(name)]}.yaml"
    cfg = OmegaConf.load(path)
    OmegaConf.resolve(cfg)  # alignment.in_dim: ${..mae.decoder_embed_dim}
    return cfg


SD_PARTS = ("unet", "vae", "scheduler")


def build_sd15_inpaint(seed: int = 0, parts: tuple[str, ...] = SD_PARTS) -> SDComponents:
    """SD-1.5 inpainting UNet (~860M parameters) and VAE (~84M) at the released sizes, randomly initialised
    (each after ``manual_seed(seed)`` in a forked RNG), frozen and in eval mode, with SD's noise schedule.
    Only ``parts`` are built (the others are None), as ``load_sd_inpaint(..., parts=...)`` does."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from asuka.models.sd import SD_SCHEDULER_CONFIG, SDComponents

    unet = vae = None
    with torch.random.fork_rng(devices=[]):
        if "unet" in parts:
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(**SD15_INPAINT_UNET_CONFIG).requires_grad_(False).eval()
        if "vae" in parts:
            torch.manual_seed(seed)
            vae = AutoencoderKL(**SD15_VAE_CONFIG).requires_grad_(False).eval()
    scheduler = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG) if "scheduler" in parts else None
    return SDComponents(unet=unet, vae=vae, scheduler=scheduler)


def build_sd(name: str, seed: int = 0, parts: tuple[str, ...] = SD_PARTS) -> SDComponents:
    """Frozen random SD-inpainting components for ``model=sd15`` (paper size) or ``model=tiny``."""
    from asuka.models.sd import SDComponents, build_tiny_sd

    if check_model_name(name) == "sd15":
        return build_sd15_inpaint(seed, parts)
    sd = build_tiny_sd(seed)
    for module in (sd.unet, sd.vae):
        module.requires_grad_(False).eval()
    return SDComponents(*(getattr(sd, name) if name in parts else None for name in SD_PARTS))


def build_mae(model_cfg: DictConfig, seed: int = 0) -> MaskedAutoencoderViT:
    """The stage-1 MAE at ``model.mae`` sizes (ViT-B/16 encoder, 8-block decoder for the paper), random weights."""
    from asuka.models.mae import MaskedAutoencoderViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MaskedAutoencoderViT(**OmegaConf.to_container(model_cfg.mae, resolve=True))


def build_alignment(model_cfg: DictConfig, seed: int = 0) -> AlignmentModule:
    """The stage-2 alignment module at ``model.alignment`` sizes, random weights."""
    from asuka.models.alignment import AlignmentModule

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AlignmentModule(**OmegaConf.to_container(model_cfg.alignment, resolve=True))


@dataclass
class InferenceModels:
    """Everything the two inference pipelines need; the SD parts are shared by both."""

    sd: SDComponents
    mae: MaskedAutoencoderViT
    alignment: AlignmentModule
    model_cfg: DictConfig


def build_inference_models(name: str, seed: int = 0) -> InferenceModels:
    """SD components + MAE + alignment for ``model=name`` (frozen, eval mode, on the CPU in float32)."""
    model_cfg = model_config(name)
    sd = build_sd(name, seed)
    mae = build_mae(model_cfg, seed).requires_grad_(False).eval()
    alignment = build_alignment(model_cfg, seed).requires_grad_(False).eval()
    if alignment.config.out_dim != sd.unet.config.cross_attention_dim:
        raise ConfigError(
            "model.alignment.out_dim",
            f"{alignment.config.out_dim} != the UNet's cross_attention_dim {sd.unet.config.cross_attention_dim}",
        )
    return InferenceModels(sd=sd, mae=mae, alignment=alignment, model_cfg=model_cfg)


def parameter_count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
