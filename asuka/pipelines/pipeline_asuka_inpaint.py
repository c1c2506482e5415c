"""ASUKA inpainting on frozen SD-1.5 inpainting: the aligned MAE prior replaces the CLIP text tokens.

With ``decoder=None`` and ``guidance_scale=1`` the sampling is exactly diffusers' ``StableDiffusionInpaintPipeline``
fed ``prompt_embeds = encode_prior(image, mask_image)``: same pre-processing, same random draws in the same order
(initial noise, then the VAE posterior sample of the masked image), same UNet input. A test holds us to that.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

# The component classes are imported here so that ``from_pretrained`` finds them: diffusers only resolves the
# library named in model_index.json (``asuka.models.mae`` ...) when that module is already imported.
from asuka.models.alignment import AlignmentModule, null_prior
from asuka.models.backbones.sdxl import predict as sdxl_predict
from asuka.models.decoder import AsukaDecoder
from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.sd import encode_latents, encode_masked_image, unet_input, vae_scale_factor
from asuka.pipelines.inpaint_io import (ImageInput, InpaintInputs, all_empty, check_images_per_prompt,
                                        empty_masks_output, prepare_inputs, preprocess_inpaint_inputs, sampled_output,
                                        strength_timesteps)
from asuka.utils.errors import AsukaError

def decode_latents(decoder: Any, vae: Any, z: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents ``z`` -> pixels in [-1, 1] (float32): the ASUKA mask-conditioned decoder (given the image
    and the mask, 1 = hole) when there is one, else the VAE's own decoder. Shared by every pipeline."""
    if decoder is not None:
        dtype = decoder.dtype
        out = decoder.decode(z.to(dtype), image=image.to(z.device, dtype), mask=mask.to(z.device, dtype))
    else:
        out = vae.decode(z.to(vae.dtype))
    sample = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, (tuple, list)) else out)
    return sample.float()


class AsukaInpaintPipeline(DiffusionPipeline):
    """Inpaint with frozen SD-1.5 inpainting conditioned on the aligned MAE prior (ASUKA-SD).

    Components: ``vae``, ``unet``, ``scheduler`` (frozen SD-1.5 inpainting; DDIM by default), ``mae``
    (:class:`asuka.models.mae.MaskedAutoencoderViT`), ``alignment`` (:class:`asuka.models.alignment.AlignmentModule`),
    and optionally ``decoder`` (:class:`asuka.models.decoder.AsukaDecoder`, the mask-conditioned decoder; ``None``
    decodes with the VAE's own decoder).

    Inputs follow diffusers (this class is the package's diffusers-facing boundary): ``image`` as PIL (any mode;
    converted to RGB), a numpy array (uint8, or float in [0, 1]) or a torch tensor ``[B,3,H,W]`` in **[0, 1]**
    (a tensor with negative values is taken as already in [-1, 1], as diffusers does, with its warning);
    ``mask_image`` as PIL, numpy or tensor in [0, 1] with **1 = hole**, binarised at 0.5. Inside, images are
    [-1, 1] and masks {0, 1} (the package convention); ``output_type="pt"`` returns [0, 1].
    """

    model_cpu_offload_seq = "mae->alignment->alignment_clip->unet->vae->decoder"
    _optional_components = ["decoder", "alignment_clip"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        mae: MaskedAutoencoderViT,
        alignment: AlignmentModule,
        decoder: AsukaDecoder | None = None,
        alignment_clip: AlignmentModule | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, mae=mae, alignment=alignment, decoder=decoder,
                              alignment_clip=alignment_clip)
        self.vae_scale_factor = vae_scale_factor(vae) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    def preprocess(
        self, image: ImageInput, mask_image: ImageInput, height: int | None = None, width: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``(image [B,3,h,w] in [-1,1], mask [B,1,h,w] in {0,1})``; see :func:`preprocess_inpaint_inputs`."""
        return preprocess_inpaint_inputs(image, mask_image, self.image_processor, self.mask_processor, height, width)

    def prepare(self, image: ImageInput, mask_image: ImageInput, height: int | None = None,
                width: int | None = None) -> InpaintInputs:
        """The call's inputs, keeping the caller's size (:func:`asuka.pipelines.inpaint_io.prepare_inputs`)."""
        return prepare_inputs(image, mask_image, self.image_processor, self.mask_processor, height, width)

    # ------------------------------------------------------------------ prior
    def _heads(self, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet's conditions from an MAE prior: the context tokens and, with ``alignment_clip`` (SDXL), the
        pooled vector (that head's tokens averaged, as ASUKA-FLUX's ``vec``), in the UNet's dtype."""
        out = []
        for head in (self.alignment, self.alignment_clip):
            if head is not None:
                x = head(prior.to(next(head.parameters()).dtype))
                out.append(x.to(device=self._execution_device, dtype=self.unet.dtype))
        return out[0], (out[1].mean(dim=1) if len(out) > 1 else None)

    def conditions_from_tensors(self, image: torch.Tensor,
                                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Aligned prior of preprocessed tensors (``image`` in [-1,1], ``mask`` 1 = hole): ``(tokens, pooled)``."""
        mae_param = next(self.mae.parameters())
        return self._heads(self.mae.prior(image.to(device=mae_param.device, dtype=mae_param.dtype),
                                          mask.to(device=mae_param.device, dtype=mae_param.dtype)))

    def condition_from_tensors(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The context tokens of :meth:`conditions_from_tensors`."""
        return self.conditions_from_tensors(image, mask)[0]

    @torch.no_grad()
    def encode_prior(
        self, image: ImageInput, mask_image: ImageInput, height: int | None = None, width: int | None = None
    ) -> torch.Tensor:
        """The cross-attention context ``[B, L, D]`` that replaces the text tokens.

        The image and mask are preprocessed exactly as in ``__call__``; the MAE then resizes them to its own
        resolution, and the alignment module maps its prior to the UNet's width.
        """
        init_image, mask = self.preprocess(image, mask_image, height, width)
        return self.condition_from_tensors(init_image, mask)

    @torch.no_grad()
    def encode_null_prior(self, batch_size: int = 1) -> torch.Tensor:
        """Context of a fully masked image: the unconditional branch when ``guidance_scale > 1``."""
        return self.encode_null_conditions(batch_size)[0]

    @torch.no_grad()
    def encode_null_conditions(self, batch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(tokens, pooled)`` of a fully masked image (pooled: SDXL only)."""
        return self._heads(null_prior(self.mae, batch_size))

    def _step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        params = set(inspect.signature(self.scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def _decode(self, latents: torch.Tensor, init_image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Latents -> pixels in [-1,1]: the mask-conditioned decoder when present, else the VAE decoder."""
        return decode_latents(self.decoder, self.vae, latents / self.vae.config.scaling_factor, init_image, mask)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        prior_embeds: torch.Tensor | None = None,
        pooled_prior_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        paste_back: bool = True,
        return_dict: bool = True,
        timesteps: list[int] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        num_images_per_prompt: int = 1,
        strength: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Inpaint the holes (mask 1) of ``image``.

        Args:
            image, mask_image: see the class docstring. Without ``height``/``width`` the output has the image's
                size: one that is not a multiple of 8 is sampled at the size rounded down and resized back; a mask
                of another size is resized to the image with a warning.
            height, width: processing and output size, rounded down to multiples of 8.
            num_inference_steps: sampler steps (DDIM 50 by default; spec 7).
            guidance_scale: 1.0 = no CFG (the paper's setting). Above 1, the prior of a fully masked image is the
                unconditional branch.
            generator: seeds the initial noise and the VAE posterior samples, as in diffusers (a list: one per
                output image).
            prior_embeds: a precomputed context ``[B, L, D]`` (skips the MAE and alignment); on SDXL (with
                ``alignment_clip``) also ``pooled_prior_embeds [B, P]``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (in [0, 1]) or ``"latent"``.
            paste_back: composite the known pixels of the input into the result (default; the decoded known
                region otherwise differs slightly from the input). ``False`` gives the decoder's output, as the
                evaluation stores it.
            num_images_per_prompt: outputs per input image (each with its own noise).
            strength: 1 starts from pure noise (the paper); below 1 from the input's latents noised to the
                ``strength`` point of the schedule, running the last ``int(num_inference_steps * strength)`` steps
                (diffusers' meaning).

        A batch whose masks are all zero returns the input unchanged without sampling (nothing to fill); inside a
        mixed batch, samples with an empty mask are replaced by their input.
        """
        inputs = self.prepare(image, mask_image, height, width)
        batch_size = inputs.image.shape[0]
        check_images_per_prompt(num_images_per_prompt, batch_size, generator)
        if bool(all_empty(inputs.mask).all()):
            return empty_masks_output(self, inputs.repeated(num_images_per_prompt), output_type, return_dict)
        device, dtype = self._execution_device, self.unet.dtype
        cond, pooled = self._conditions(inputs, prior_embeds, pooled_prior_embeds, guidance_scale,
                                        num_images_per_prompt)
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)
        timesteps = strength_timesteps(self.scheduler, timesteps, strength)

        # As diffusers: the input's latents (strength < 1), the initial noise, then the masked image's posterior
        # sample; the VAE samples are drawn once per input image (the first generator of its copies).
        encode_gen = generator[::num_images_per_prompt] if isinstance(generator, list) else generator
        init = inputs.image.to(device=device)
        image_latents = None if strength == 1.0 or latents is not None else encode_latents(self.vae, init, encode_gen)
        n = batch_size * num_images_per_prompt
        shape = (n, self.vae.config.latent_channels, init.shape[-2] // self.vae_scale_factor,
                 init.shape[-1] // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
            if image_latents is None:
                latents = latents * self.scheduler.init_noise_sigma
            else:
                image_latents = image_latents.repeat_interleave(num_images_per_prompt, dim=0).to(latents)
                latents = self.scheduler.add_noise(image_latents, latents, timesteps[:1].repeat(n))
        else:
            latents = latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma
        mask_latent, masked_image_latents = (
            t.repeat_interleave(num_images_per_prompt, dim=0).to(device=device, dtype=dtype)
            for t in encode_masked_image(self.vae, init, inputs.mask.to(device=device), generator=encode_gen))
        if guidance_scale > 1.0:
            mask_latent = torch.cat([mask_latent] * 2)
            masked_image_latents = torch.cat([masked_image_latents] * 2)

        step_kwargs = self._step_kwargs(generator, eta)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                model_latents = torch.cat([latents] * 2) if guidance_scale > 1.0 else latents
                model_latents = self.scheduler.scale_model_input(model_latents, t)
                model_in = unet_input(model_latents, mask_latent, masked_image_latents)
                if pooled is None:
                    noise_pred = self.unet(model_in, t, encoder_hidden_states=cond, return_dict=False)[0]
                else:  # SDXL: the pooled vector and the image's time ids as well
                    noise_pred = sdxl_predict(self.unet, model_in, t, cond, pooled, tuple(init.shape[-2:]))
                if guidance_scale > 1.0:
                    uncond, conditional = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (conditional - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = (out or {}).get("latents", latents)
                progress_bar.update()

        return sampled_output(self, latents, inputs.repeated(num_images_per_prompt), paste_back, output_type,
                              return_dict)

    def _conditions(self, inputs: InpaintInputs, prior_embeds: torch.Tensor | None,
                    pooled_prior_embeds: torch.Tensor | None, guidance_scale: float,
                    copies: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet's context (and SDXL's pooled vector) for every output image; with CFG the null prior's first."""
        batch_size, device, dtype = inputs.image.shape[0], self._execution_device, self.unet.dtype
        if prior_embeds is not None:
            if self.alignment_clip is not None and pooled_prior_embeds is None:
                raise AsukaError("prior_embeds: this pipeline also needs pooled_prior_embeds (SDXL's pooled vector)")
            cond, pooled = prior_embeds.to(device=device, dtype=dtype), pooled_prior_embeds
        else:
            cond, pooled = self.conditions_from_tensors(inputs.image, inputs.mask)
        if cond.shape[0] != batch_size:
            cond = cond.repeat(batch_size // cond.shape[0], 1, 1)
        if pooled is not None and pooled.shape[0] != batch_size:
            pooled = pooled.repeat(batch_size // pooled.shape[0], 1)
        cond = cond.repeat_interleave(copies, dim=0)
        pooled = None if pooled is None else pooled.repeat_interleave(copies, dim=0)
        if guidance_scale > 1.0:
            null_cond, null_pooled = self.encode_null_conditions(cond.shape[0])
            cond = torch.cat([null_cond, cond])
            pooled = None if pooled is None else torch.cat([null_pooled, pooled.to(null_pooled)])
        return cond, pooled
