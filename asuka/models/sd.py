"""The frozen SD-1.5 inpainting generator (UNet, VAE, noise schedule) and the 9-channel input it expects.

ASUKA never trains or loads the CLIP text encoder: the aligned MAE prior replaces the text tokens. The helpers
``encode_latents``, ``encode_masked_image`` and ``unet_input`` are the single implementation of how the UNet input is
built; the stage-2 training loop and :class:`asuka.pipelines.AsukaInpaintPipeline` both call them, so training and
inference cannot drift apart (and both match diffusers' ``StableDiffusionInpaintPipeline``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from asuka.models.frozen import FrozenModelSpec, load_frozen
from asuka.utils.errors import ConfigError

# SD-1.5's training noise schedule (the scheduler_config.json of every SD-1.x checkpoint).
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "clip_sample": False,
}

SD_SUBFOLDERS = ("unet", "vae", "scheduler")


@dataclass
class SDComponents:
    """The frozen parts of SD-1.5 inpainting that ASUKA uses (no text encoder, no tokenizer)."""

    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    scheduler: DDPMScheduler | None


def vae_scale_factor(vae: torch.nn.Module) -> int:
    """Pixels per latent cell (8 for SD), computed as diffusers does from the VAE's block count."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_side(vae: torch.nn.Module, resolution: int) -> int:
    """Latent grid side of a ``resolution``-pixel square; ConfigError on ``resolution`` unless the VAE divides it."""
    factor = vae_scale_factor(vae)
    if int(resolution) % factor:
        raise ConfigError("resolution", f"must be divisible by {factor} (the VAE's downsampling), got {resolution}")
    return int(resolution) // factor


def build_tiny_sd(seed: int = 0) -> SDComponents:
    """Small random SD-inpainting components (9-channel UNet, 8x VAE, SD noise schedule) for tests and the demo.

    Each part is built right after ``manual_seed(seed)`` inside a forked RNG, so the result does not depend on what
    ran before and the caller's global RNG is left alone.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=9,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=8,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 8, 16, 16),
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
        )
        torch.manual_seed(seed)
        scheduler = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG)
    return SDComponents(unet=unet, vae=vae, scheduler=scheduler)


SD_SPEC = FrozenModelSpec(
    name="SD-1.5 inpainting", block="model.sd", paths_key="paths.sd_inpaint",
    classes={"unet": UNet2DConditionModel, "vae": AutoencoderKL, "scheduler": DDPMScheduler},
    components=SDComponents, build_tiny=build_tiny_sd, in_channels=("unet", 9, "an inpainting UNet has 9"),
)


def load_sd_inpaint(
    sd_cfg: Any,
    path: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    parts: tuple[str, ...] = SD_SUBFOLDERS,
    train_unet: bool = False,
) -> SDComponents:
    """Load the frozen SD-1.5 inpainting UNet, VAE and training noise schedule (``DDPMScheduler``).

    ``sd_cfg`` is the ``model.sd`` config block: ``source: pretrained`` reads ``path`` (a hub id or a local diffusers
    folder with ``unet/``, ``vae/``, ``scheduler/``); ``source: tiny`` builds random components with ``seed``.
    ``dtype`` (default ``sd_cfg.dtype``) applies to the UNet and VAE; both come back frozen and in eval mode.
    ``parts`` limits what is read (stage 3 needs only the VAE); the others are None. ``train_unet`` leaves the UNet
    trainable and in train mode (LAR-Gen trains the whole inpainting UNet).
    """
    sd = load_frozen(SD_SPEC, sd_cfg, path, device, dtype, parts)
    if train_unet and sd.unet is not None:
        sd.unet.requires_grad_(True).train()
    return sd


def build_inference_scheduler(scheduler_config: Mapping[str, Any]) -> DDIMScheduler:
    """DDIM on the UNet's own training schedule: the default sampler (spec 7: DDIM, 50 steps, eta 0).

    ``set_alpha_to_one``/``steps_offset`` default to SD's values when the stored config lacks them (DDIM's own
    defaults differ from SD's).
    """
    config = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
    config.setdefault("set_alpha_to_one", False)
    config.setdefault("steps_offset", 1)
    config.setdefault("clip_sample", False)
    return DDIMScheduler.from_config(config)


def sample_latents(
    vae: AutoencoderKL,
    pixels: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None,
    sample_mode: str,
) -> torch.Tensor:
    """Encode ``pixels`` and take a sample (or the mode) of the posterior, one generator per sample if a list."""

    def one(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        dist = vae.encode(x).latent_dist
        return dist.sample(generator=gen) if sample_mode == "sample" else dist.mode()

    if isinstance(generator, list):
        if len(generator) != pixels.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {pixels.shape[0]}")
        return torch.cat([one(pixels[i : i + 1], generator[i]) for i in range(pixels.shape[0])], dim=0)
    return one(pixels, generator)


def encode_latents(
    vae: AutoencoderKL,
    image: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    sample_mode: str = "sample",
) -> torch.Tensor:
    """``image [B,3,H,W] in [-1,1]`` -> scaled latents ``E(x) * scaling_factor`` (the diffusion target space)."""
    if sample_mode not in ("sample", "mode"):
        raise ValueError(f"sample_mode must be 'sample' or 'mode', got {sample_mode!r}")
    latents = sample_latents(vae, image.to(device=vae.device, dtype=vae.dtype), generator, sample_mode)
    return latents * vae.config.scaling_factor


def encode_masked_image(
    vae: AutoencoderKL,
    image: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None = None,
    sample_mode: str = "sample",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two conditioning inputs of the inpainting UNet, built as diffusers' inpainting pipeline builds them.

    ``image [B,3,H,W]`` in [-1,1], ``mask [B,1,H,W]`` with 1 = hole. Returns ``(mask_latent [B,1,H/8,W/8],
    masked_image_latents [B,4,H/8,W/8])``: the masked image is ``image * (mask < 0.5)`` (holes set to 0, i.e. grey),
    encoded and scaled by ``scaling_factor``; the mask is resized to the latent grid with nearest interpolation.
    ``generator`` draws the posterior sample, so its state advances exactly as in diffusers.
    """
    if image.ndim != 4 or mask.ndim != 4 or mask.shape[1] != 1 or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"expected image [B,3,H,W] and mask [B,1,H,W], got {tuple(image.shape)} and {tuple(mask.shape)}"
        )
    masked_image_latents = encode_latents(vae, masked_image(image, mask), generator=generator, sample_mode=sample_mode)
    mask_latent = latent_mask(vae, mask)
    return mask_latent.to(device=masked_image_latents.device, dtype=masked_image_latents.dtype), masked_image_latents


def masked_image(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The inpainting UNet's masked image: holes (``mask >= 0.5``) set to 0, i.e. grey in [-1, 1]."""
    return image * (mask < 0.5)


def latent_mask(vae: AutoencoderKL, mask: torch.Tensor) -> torch.Tensor:
    """``mask [B,1,H,W]`` resized to the latent grid with nearest interpolation, as diffusers' pipeline does."""
    factor = vae_scale_factor(vae)
    height, width = mask.shape[-2:]
    return F.interpolate(mask.float(), size=(height // factor, width // factor))


def unet_input(
    noisy_latents: torch.Tensor, mask_latent: torch.Tensor, masked_image_latents: torch.Tensor
) -> torch.Tensor:
    """The 9-channel UNet input: ``[noisy latents (4), mask (1), masked-image latents (4)]`` along channels."""
    dtype = noisy_latents.dtype
    return torch.cat([noisy_latents, mask_latent.to(dtype), masked_image_latents.to(dtype)], dim=1)
