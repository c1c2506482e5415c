"""ASUKA on FLUX.1-Fill-dev: the aligned MAE prior replaces FLUX's T5 tokens and pooled CLIP vector.

The released recipe (``asuka-flux/test_asuka_flux.py``): MAE prior -> two alignment heads (``txt`` [B,256,4096] from
the T5 head; ``vec`` [B,768] = the CLIP head's output averaged over the tokens) -> ``null + w (c - null)`` with
``w = condition_weight`` (0.5) -> FLUX.1-Fill sampling (50 Euler steps, dynamic shift, distilled guidance 30, fill
condition from the masked image) -> the ASUKA decoder. With ``decoder=None`` and ``condition_weight=1`` the sampling is
diffusers' ``FluxFillPipeline`` fed ``prompt_embeds``/``pooled_prompt_embeds`` = the aligned prior and the same
latents (a test holds us to that). Without an MAE the stored conditions are used as they are: that is the
FLUX.1-Fill-dev baseline (stored prompt embedding, plain AE decode).

``recipe="official"`` reproduces the released evaluation script bit for bit where the hardware allows: the grey mask
kept everywhere (MAE, fill condition, decoder blends; ``misato_dataset`` divides by 255 and never thresholds), the MAE
and both heads in bf16 (weights cast, autocast), the noise drawn in bf16, the fill condition cast to bf16, PIL outputs
by truncation ``np.clip(x * 255, 0, 255).astype(uint8)``. ``"ours"`` (default): masks binarised at 0.5, fp32 prior,
noise and fill in the transformer's dtype, PIL outputs rounded (diffusers').
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

# Imported so that from_pretrained finds the component classes named in model_index.json.
from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import flux
from asuka.models.backbones.flux import FluxConditions
from asuka.models.decoder import AsukaDecoder
from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.sd import vae_scale_factor
from asuka.pipelines.inpaint_io import (ImageInput, InpaintInputs, all_empty, check_images_per_prompt,
                                        empty_masks_output, prepare_inputs, preprocess_inpaint_inputs, sampled_output,
                                        strength_timesteps)
from asuka.pipelines.pipeline_asuka_inpaint import decode_latents
from asuka.utils.errors import AsukaError, ConfigError

CONDITION_WEIGHT = 0.5      # official --condition_weight default
RECIPES = ("ours", "official")
RELEASE_DTYPE = torch.bfloat16   # test_asuka_flux.py: weight_dtype, autocast, get_noise(dtype=bf16), img_cond cast


def check_recipe(recipe: str, key: str = "recipe") -> str:
    """``recipe`` when it names one of :data:`RECIPES`, else a one-line ConfigError naming ``key``."""
    if str(recipe) not in RECIPES:
        raise ConfigError(key, f"unknown value '{recipe}', expected one of {', '.join(RECIPES)}")
    return str(recipe)


def truncate_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """``[B,H,W,3]`` floats in [0, 1] -> PIL by truncation, as the official script saves its PNGs."""
    return [PIL.Image.fromarray(np.clip(x * 255, 0, 255).astype(np.uint8)) for x in images]


class AsukaFluxFillPipeline(DiffusionPipeline):
    """Inpaint with frozen FLUX.1-Fill-dev conditioned on the aligned MAE prior (ASUKA-FLUX), or with stored
    conditions only (the FLUX.1-Fill-dev baseline).

    Components: ``transformer``, ``vae``, ``scheduler`` (frozen FLUX.1-Fill), ``conditions``
    (:class:`~asuka.models.backbones.flux.FluxConditions`: the null pair, or the baseline's stored prompt), and
    optionally ``mae``, ``alignment`` (T5 head, tokens) and ``alignment_clip`` (CLIP head, pooled), ``decoder``
    (the ASUKA decoder on raw AE latents; None decodes with the AE). ``condition_weight`` and ``guidance`` are the
    call's defaults, saved in ``model_index.json`` (``model.condition_weight``, ``model.guidance``), as is
    ``recipe`` (module docstring; ``official`` casts the MAE and heads to bf16 here). Inputs as
    :class:`~asuka.pipelines.AsukaInpaintPipeline` (sizes rounded down to multiples of 16).
    """

    model_cpu_offload_seq = "mae->alignment->alignment_clip->transformer->vae->decoder"
    _optional_components = ["mae", "alignment", "alignment_clip", "decoder"]

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
        conditions: FluxConditions,
        mae: MaskedAutoencoderViT | None = None,
        alignment: AlignmentModule | None = None,
        alignment_clip: AlignmentModule | None = None,
        decoder: AsukaDecoder | None = None,
        condition_weight: float = CONDITION_WEIGHT,
        guidance: float = flux.GUIDANCE,
        recipe: str = "ours",
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler, conditions=conditions, mae=mae,
                              alignment=alignment, alignment_clip=alignment_clip, decoder=decoder)
        self.register_to_config(condition_weight=float(condition_weight), guidance=float(guidance),
                                recipe=check_recipe(recipe))
        if self.official:
            for part in (mae, alignment, alignment_clip):
                if part is not None:
                    part.to(RELEASE_DTYPE)
        self.vae_scale_factor = vae_scale_factor(vae) if vae is not None else 8
        multiple = self.vae_scale_factor * flux.PACK
        self.image_processor = VaeImageProcessor(vae_scale_factor=multiple)
        self.mask_processor = VaeImageProcessor(vae_scale_factor=multiple, do_normalize=False,
                                                do_binarize=not self.official, do_convert_grayscale=True)

    @property
    def official(self) -> bool:
        """The released script's recipe (grey masks, bf16 prior, noise and fill, truncated PNGs)."""
        return self.config.recipe == "official"

    @property
    def uses_prior(self) -> bool:
        """ASUKA (MAE + both heads) rather than the stored conditions alone."""
        return self.mae is not None

    def preprocess(self, image: ImageInput, mask_image: ImageInput, height: int | None = None,
                   width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(image [B,3,h,w] in [-1,1], mask [B,1,h,w])``, sides multiples of 16; the mask in {0,1}, or in
        [0,1] (grey values kept) under ``recipe="official"``."""
        return preprocess_inpaint_inputs(image, mask_image, self.image_processor, self.mask_processor, height, width)

    # ------------------------------------------------------------------ conditions
    def aligned_prior(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two heads on the MAE prior of preprocessed tensors: ``txt [B,L,D]`` and ``vec [B,P]`` (token mean).
        Under ``recipe="official"`` inside bf16 autocast, as the official script runs them on CUDA (on the CPU
        torch's CPU autocast, the closest it allows)."""
        param = next(self.mae.parameters())
        with torch.autocast(self._execution_device.type, dtype=RELEASE_DTYPE, enabled=self.official):
            prior = self.mae.prior(image.to(param.device, param.dtype), mask.to(param.device, param.dtype))
            txt = self.alignment(prior.to(next(self.alignment.parameters()).dtype))
            vec = self.alignment_clip(prior.to(next(self.alignment_clip.parameters()).dtype)).mean(dim=1)
        return txt, vec

    def encode_conditions(self, image: torch.Tensor, mask: torch.Tensor,
                          condition_weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(txt, vec)`` for the transformer: ``null + w * (aligned - null)``, or the stored pair (baseline)."""
        b = image.shape[0]
        null_txt, null_vec = self.conditions.txt.float(), self.conditions.vec.float()
        if not self.uses_prior:
            return null_txt.expand(b, -1, -1), null_vec.expand(b, -1)
        txt, vec = self.aligned_prior(image, mask)
        txt, vec = txt.float().to(null_txt.device), vec.float().to(null_txt.device)
        if txt.shape[1:] != null_txt.shape[1:] or vec.shape[1:] != null_vec.shape[1:]:
            raise AsukaError(f"aligned prior {tuple(txt.shape[1:])}/{tuple(vec.shape[1:])} does not match the null "
                             f"conditions {tuple(null_txt.shape[1:])}/{tuple(null_vec.shape[1:])}")
        w = float(self.config.condition_weight if condition_weight is None else condition_weight)
        return null_txt + w * (txt - null_txt), null_vec + w * (vec - null_vec)

    def _decode(self, latents: torch.Tensor, init_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Packed latents -> pixels in [-1,1]: the ASUKA decoder when present, else the AE decoder."""
        z = flux.to_ae_space(self.vae, flux.unpack(latents, init_image.shape[-2], init_image.shape[-1], self.vae))
        return decode_latents(self.decoder, self.vae, z, init_image, mask)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = flux.NUM_STEPS,
        guidance: float | None = None,
        condition_weight: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        paste_back: bool | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        guidance_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        strength: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Inpaint the holes (mask 1) of ``image``.

        Args:
            num_inference_steps: Euler steps (50, official).
            guidance: FLUX.1-Fill's distilled guidance value (default the pipeline's, 30 as official); not
                classifier-free guidance.
            condition_weight: ``w`` of ``null + w (c - null)`` (default the pipeline's, 0.5 as official; 1 = the
                aligned prior as is).
            generator: draws the initial noise, then the AE posterior sample of the masked image.
            latents: packed initial noise ``[B, N, 64]``.
            prompt_embeds, pooled_prompt_embeds: precomputed ``txt``/``vec`` (skip the MAE, heads and blending).
            output_type: ``"pil"`` (rounded; truncated under ``recipe="official"``), ``"np"``, ``"pt"`` (in
                [0, 1]) or ``"latent"`` (packed).
            paste_back: composite the known pixels of the input into the result; default on, except under
                ``recipe="official"`` (the released script saves the output as sampled).
            num_images_per_prompt: outputs per input image (each with its own noise).
            strength: 1 starts from pure noise; below 1 from the input's latents mixed with noise at the
                ``strength`` point of the schedule (diffusers' FluxFillPipeline meaning).

            guidance_scale: classifier-free guidance, as the SD pipeline's argument (so the scripts drive both
                alike); only 1 (none, the released recipe) is supported.

        Empty masks return the input, as the SD pipeline does. Without ``height``/``width`` the output has the
        image's size (sampled at the size rounded down to 16 and resized back), except under ``recipe="official"``
        (the released script's rounded size).
        """
        if float(guidance_scale) != 1.0:
            raise AsukaError(f"guidance_scale={guidance_scale}: ASUKA-FLUX runs FLUX.1-Fill's distilled guidance "
                             "(guidance=30), without classifier-free guidance; use guidance_scale=1")
        inputs = InpaintInputs(*self.preprocess(image, mask_image, height, width)) if self.official else \
            prepare_inputs(image, mask_image, self.image_processor, self.mask_processor, height, width)
        paste_back = not self.official if paste_back is None else paste_back
        n = num_images_per_prompt
        check_images_per_prompt(n, inputs.image.shape[0], generator)
        device, dtype = self._execution_device, self.transformer.dtype
        truncate = self.official and output_type == "pil"
        if truncate:
            output_type = "np"
        if bool(all_empty(inputs.mask).all()):
            return self._truncated(empty_masks_output(self, inputs.repeated(n), output_type, return_dict), truncate)

        init_image, mask = inputs.image, inputs.mask
        if prompt_embeds is None or pooled_prompt_embeds is None:
            txt, vec = self.encode_conditions(init_image, mask, condition_weight)
        else:
            txt, vec = prompt_embeds, pooled_prompt_embeds
        txt, vec = txt.to(device, dtype), vec.to(device, dtype)
        if txt.shape[0] != init_image.shape[0]:
            txt, vec = (txt.repeat(init_image.shape[0] // txt.shape[0], 1, 1),
                        vec.repeat(init_image.shape[0] // vec.shape[0], 1))
        txt, vec = txt.repeat_interleave(n, dim=0), vec.repeat_interleave(n, dim=0)
        b = txt.shape[0]

        # As diffusers' FluxFillPipeline: the input's latents (strength < 1), the initial noise, then the masked
        # image's posterior sample; the AE samples are drawn once per input image (the first generator of its
        # copies).
        encode_gen = generator[::n] if isinstance(generator, list) else generator
        h, w = flux.latent_grid(self.vae, init_image.shape[-2], init_image.shape[-1])
        timesteps = flux.inference_timesteps(self.scheduler, num_inference_steps, h * w // flux.PACK ** 2, device)
        timesteps = strength_timesteps(self.scheduler, timesteps, strength, flow_matching=True)
        image_latents = None if strength == 1.0 or latents is not None else \
            flux.pack(flux.encode_latents(self.vae, init_image.to(device), encode_gen))
        if latents is None:
            noise = randn_tensor((b, self.vae.config.latent_channels, h, w), generator=generator, device=device,
                                 dtype=RELEASE_DTYPE if self.official else dtype)
            latents = flux.pack(noise).to(dtype)
            if image_latents is not None:
                latents = self.scheduler.scale_noise(image_latents.repeat_interleave(n, dim=0).to(latents),
                                                     timesteps[:1].repeat(b), latents)
        else:
            latents = latents.to(device=device, dtype=dtype)
        fill = flux.fill_condition(self.vae, init_image.to(device), mask.to(device), encode_gen)
        fill = (fill.to(RELEASE_DTYPE) if self.official else fill).to(device, dtype).repeat_interleave(n, dim=0)
        img_ids = flux.image_ids(self.vae, init_image.shape[-2], init_image.shape[-1], device, dtype)

        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                v = flux.predict(self.transformer, latents, fill, t.expand(b), txt, vec, img_ids,
                                 self.config.guidance if guidance is None else guidance)
                latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    latents = (callback_on_step_end(self, i, t, {"latents": latents}) or {}).get("latents", latents)
                bar.update()

        return self._truncated(sampled_output(self, latents, inputs.repeated(n), paste_back, output_type,
                                              return_dict), truncate)

    @staticmethod
    def _truncated(out: ImagePipelineOutput | tuple, truncate: bool) -> ImagePipelineOutput | tuple:
        """``np`` images turned into PIL by truncation when ``truncate`` (the official recipe's ``pil`` output)."""
        if not truncate:
            return out
        images = truncate_to_pil(out.images if isinstance(out, ImagePipelineOutput) else out[0])
        return ImagePipelineOutput(images=images) if isinstance(out, ImagePipelineOutput) else (images,)
