"""SDXL inpainting as a backbone (LAR-Gen's released model is an SDXL one): the 9-channel UNet with SDXL's
``text_time`` additional embedding, its two text encoders, and the SD VAE/noise conventions it shares with SD-1.5.

What differs from SD-1.5 lives here: the conditions are the concatenated penultimate hidden states of CLIP ViT-L
(layer 11 of 12) and OpenCLIP ViT-bigG ``[B, 77, 768 + 1280]`` plus bigG's projected pooled vector ``[B, 1280]``,
and the UNet also takes the size/crop "time ids" (diffusers ``StableDiffusionXLInpaintPipeline``). The VAE input,
the 9-channel layout, the DDPM epsilon objective (scaled-linear 0.00085-0.012) and DDIM sampling are SD-1.5's
(:mod:`asuka.models.sd`); the VAE's scale 0.13025 is read from its config.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from asuka.models import sd
from asuka.models.backbones.base import ConditionShapes
from asuka.models.backbones.sd15 import SD15Inpaint
from asuka.models.frozen import FrozenModelSpec, load_frozen
from asuka.models.tiny_text import tiny_text_config, tiny_token_ids
from asuka.utils.errors import AsukaError

# scheduler/scheduler_config.json of stabilityai/stable-diffusion-xl-base-1.0 (and of the SDXL inpainting
# checkpoints): SD-1.5's training schedule.
SDXL_SCHEDULER_CONFIG: dict[str, Any] = dict(sd.SD_SCHEDULER_CONFIG)
SDXL_VAE_SCALE = 0.13025    # vae/config.json scaling_factor of SDXL
SDXL_SUBFOLDERS = ("unet", "vae", "scheduler")                              # what ASUKA needs
SDXL_TEXT_PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")  # what LAR-Gen adds
TIME_IDS = 6                # (original h, w, crop top, left, target h, w); no aesthetic score for inpainting


@dataclass
class SDXLComponents:
    """The frozen SDXL inpainting parts; the text parts are None unless asked for (ASUKA does not need them).
    Tokenizers are None with tiny random encoders (the prompts' bytes are the ids)."""

    unet: UNet2DConditionModel | None
    vae: AutoencoderKL | None
    scheduler: DDPMScheduler | None
    text_encoder: CLIPTextModel | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer: CLIPTokenizer | None = None
    tokenizer_2: CLIPTokenizer | None = None


def build_tiny_sdxl(seed: int = 0) -> SDXLComponents:
    """Small random SDXL inpainting components: 9-channel ``text_time`` UNet (context 16 + 16 = 32, pooled 16,
    time-id embedding 8), 8x VAE at SDXL's scale, two tiny CLIP text encoders; each part built after
    ``manual_seed(seed)`` in a forked RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=(2, 4), norm_num_groups=8, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + TIME_IDS * 8,
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), latent_channels=4,
            norm_num_groups=8, sample_size=64, scaling_factor=SDXL_VAE_SCALE,
        )
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(tiny_text_config(16))
        torch.manual_seed(seed + 1)
        text_encoder_2 = CLIPTextModelWithProjection(tiny_text_config(16))
    scheduler = DDPMScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    return SDXLComponents(unet=unet, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                          text_encoder_2=text_encoder_2)


SDXL_SPEC = FrozenModelSpec(
    name="SDXL inpainting", block="model.sdxl", paths_key="paths.sdxl_inpaint",
    classes={"unet": UNet2DConditionModel, "vae": AutoencoderKL, "scheduler": DDPMScheduler,
             "text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
             "tokenizer": CLIPTokenizer, "tokenizer_2": CLIPTokenizer},
    components=SDXLComponents, build_tiny=build_tiny_sdxl,
    in_channels=("unet", 9, "an SDXL inpainting UNet has 9 (e.g. diffusers/stable-diffusion-xl-1.0-inpainting-0.1)"),
)


def load_sdxl_inpaint(block: Any, path: str | os.PathLike | None, device: str | torch.device = "cpu",
                      dtype: torch.dtype | str | None = None,
                      parts: tuple[str, ...] = SDXL_SUBFOLDERS) -> SDXLComponents:
    """The frozen SDXL inpainting parts (``model.sdxl`` block: ``source: pretrained`` reads ``path``, a hub id or a
    local diffusers folder; ``tiny`` builds random ones); ``parts`` adds :data:`SDXL_TEXT_PARTS` for prompts."""
    comps = load_frozen(SDXL_SPEC, block, path, device, dtype, parts)
    if comps.unet is not None and comps.unet.config.addition_embed_type != "text_time":
        raise AsukaError(f"{path}: unet/ is not an SDXL UNet (no text_time embedding; set {SDXL_SPEC.paths_key})")
    return comps


def encode_prompt(components: SDXLComponents, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens [B, 77, 768 + 1280], pooled [B, 1280])`` as diffusers' SDXL pipelines build them: both encoders'
    penultimate hidden states concatenated, and the second encoder's projected pooled output. One difference, the
    released one (SGM/scepter tokenise the bigG prompt with ``open_clip.tokenize``): SDXL's ``tokenizer_2`` pads with
    "!" and so splits every "!" of a prompt out as that special token (id 0, "!!" as two); here "!" is tokenised as
    open_clip does (``split_special_tokens``)."""
    hidden, pooled = [], None
    for tokenizer, encoder, plain in ((components.tokenizer, components.text_encoder, False),
                                      (components.tokenizer_2, components.text_encoder_2, True)):
        if tokenizer is None:
            ids = torch.cat([tiny_token_ids(p) for p in prompts])
        else:
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, split_special_tokens=plain, return_tensors="pt").input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # the last encoder's: CLIPTextModelWithProjection.text_embeds
    return torch.cat(hidden, dim=-1), pooled


def time_ids(height: int, width: int, batch: int, device: Any = None, dtype: torch.dtype = torch.float32,
             crop_top_left: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """SDXL's micro-conditioning ``[B, 6]`` = (original size, crop top-left, target size) in pixels; diffusers'
    default (original = target = the image size, no crop)."""
    ids = torch.tensor([[height, width, *crop_top_left, height, width]], device=device, dtype=dtype)
    return ids.repeat(batch, 1)


def predict(unet: UNet2DConditionModel, model_in: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
            pooled: torch.Tensor, pixel_size: tuple[int, int], **kwargs: Any) -> torch.Tensor:
    """The UNet's epsilon for the 9-channel ``model_in`` with the SDXL conditions of a ``pixel_size`` image
    (``kwargs``: e.g. ``cross_attention_kwargs``)."""
    dtype = model_in.dtype
    ids = time_ids(*pixel_size, model_in.shape[0], model_in.device, dtype)
    added = {"text_embeds": pooled.to(dtype), "time_ids": ids}
    return unet(model_in, t, encoder_hidden_states=tokens.to(dtype), added_cond_kwargs=added, **kwargs).sample


class SDXLInpaint(SD15Inpaint):
    """Frozen SDXL inpainting: tokens ``[B, 77, 2048]`` + pooled ``[B, 1280]``; the rest as SD-1.5 (subclassed so
    the VAE/9-channel/DDPM code stays the one in :mod:`asuka.models.sd`)."""

    name = "sdxl"
    config_key = "sdxl"
    paths_key = "sdxl_inpaint"
    pixel_multiple = 8

    def load(self, block: Any, path: Any, device: str | torch.device = "cpu", dtype: Any = None,
             parts: tuple[str, ...] | None = None) -> SDXLComponents:
        return load_sdxl_inpaint(block, path, device=device, dtype=dtype, parts=parts or SDXL_SUBFOLDERS)

    def condition_shapes(self, components: SDXLComponents) -> ConditionShapes:
        cfg = components.unet.config
        pooled = int(cfg.projection_class_embeddings_input_dim) - TIME_IDS * int(cfg.addition_time_embed_dim)
        return ConditionShapes(token_dim=int(cfg.cross_attention_dim), pooled_dim=pooled)

    # ---------------------------------------------------------------- stage 2: two heads, as ASUKA-FLUX
    alignment_heads = {"alignment": "alignment", "alignment_clip": "alignment_clip"}  # in an SDXL stage-2 final/

    def head_conditions(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Context = the token head's tokens; pooled = the pooled head's tokens averaged (as ASUKA-FLUX's ``vec``)."""
        return outputs["alignment"], outputs["alignment_clip"].mean(dim=1)

    def predict(self, components: SDXLComponents, denoiser: torch.nn.Module, model_in: torch.Tensor,
                t: torch.Tensor, conditions: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """SD-1.5's objective (inherited) with the SDXL conditions: tokens, pooled, time ids of the image size."""
        factor = sd.vae_scale_factor(components.vae)
        size = (model_in.shape[-2] * factor, model_in.shape[-1] * factor)
        return predict(denoiser, model_in, t, conditions[0], conditions[1], size)
