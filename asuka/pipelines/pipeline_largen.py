"""LAR-Gen inpainting: a scene, a mask, and a text prompt, a subject image, or both (Locate, Assign, Refine).

Released defaults (scepter ``largen_inference.py``, ``diffusion.py``, ``solvers.py``, ``largen_ui.py``): DDIM with
trailing timesteps, 50 steps, ending on the clean estimate; CFG 7.5 with guidance rescale 0.5 (one scale for text
and image). The unconditional branch has the empty prompt (encoded, on SDXL too: scepter's conditioner does not zero
it) and zeroed CLIP pixels for Assign, but keeps the subject's CLIP details and latent for the RefineNet reference.
Before every model call the known region is the source latent noised to that step with fresh noise (the subject
latent likewise, per step and per branch); the mask reaches the latent grid by an antialiased resize thresholded at
0.5. The scene is cropped square around the mask (1.3x its box), inpainted at the UNet's size and pasted back; the
subject is put on white, cropped to its mask and padded square, and CLIP reads it resized from its own resolution
(bilinear, antialiased) to 224. Text-guided outpainting (:meth:`LarGenInpaintPipeline.outpaint`) samples the
released canvas (:mod:`asuka.models.largen.outpaint`) whole, without the crop.
An optional ASUKA mask-conditioned decoder (``decoder``) decodes instead of the VAE, against known-region colour drift.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

# Imported so that from_pretrained resolves the asuka classes named in model_index.json.
from asuka.data.images import pil_to_tensor, to_gray, to_rgb
from asuka.models.backbones import sdxl
from asuka.models.decoder import AsukaDecoder
from asuka.models.largen.assign import AssignAdapter
from asuka.models.largen.clip_image import clip_pixels, image_hidden_states, prepare_subject
from asuka.models.largen.crop import crop_back, mask_box, pad_square, released_crop_box
from asuka.models.largen.net import LarGenNet
from asuka.models.largen.outpaint import OUTPAINT_DIRECTIONS, OUTPAINT_RATIO, outpaint_canvas
from asuka.models.largen.refine import RefineNet
from asuka.models.sd import encode_latents, encode_masked_image, unet_input, vae_scale_factor
from asuka.models.tiny_text import tiny_token_ids
from asuka.pipelines.inpaint_io import ImageInput, prepare_inputs
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline, decode_latents
from asuka.utils.errors import AsukaError

GUIDANCE_SCALE = 7.5      # released LAR-Gen inference
GUIDANCE_RESCALE = 0.5    # released LAR-Gen inference


def encode_prompts(
    tokenizer: CLIPTokenizer | None, text_encoder: CLIPTextModel, prompts: Sequence[str]
) -> torch.Tensor:
    """CLIP text hidden states ``[B, 77, D]``; without a tokenizer (tiny test models) the prompts' bytes are the ids."""
    if tokenizer is None:
        ids = torch.cat([tiny_token_ids(p) for p in prompts])
    else:
        ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def prompt_conditions(
    parts: Any, prompts: Sequence[str], pixel_size: Sequence[int]
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The text tokens and, on SDXL (``parts.text_encoder_2`` given), the UNet's ``added_cond_kwargs`` (pooled vector +
    the time ids of a ``pixel_size`` image). ``parts``: the pipeline or the training stage's parts (same names)."""
    if getattr(parts, "text_encoder_2", None) is None:
        return encode_prompts(parts.tokenizer, parts.text_encoder, prompts), None
    tokens, pooled = sdxl.encode_prompt(parts, prompts)
    ids = sdxl.time_ids(*pixel_size, len(prompts), tokens.device, tokens.dtype)
    return tokens, {"text_embeds": pooled, "time_ids": ids}


def refine_conditions(parts: Any, batch: int, pixel_size: Sequence[int]) -> dict[str, torch.Tensor] | None:
    """The RefineNet's ``added_cond_kwargs`` on SDXL: the empty prompt's pooled vector and the size ids of the main
    UNet (released ``LargenUNetXL`` replaces the pooled part of the main UNet's vector with ``null_y``; the release
    does not show what builds ``null_y``, the empty prompt's is our choice, as the unconditional branch's); None on
    SD-1.5, whose UNet takes no added conditions."""
    if getattr(parts, "text_encoder_2", None) is None:
        return None
    added = prompt_conditions(parts, [""], pixel_size)[1]  # one encoding, the same for every sample
    return {key: value.expand(batch, *value.shape[1:]) for key, value in added.items()}


def _mask_array(mask: ImageInput | None) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, PIL.Image.Image):
        return np.asarray(to_gray(mask)) >= 128
    arr = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).squeeze()
    return arr >= (128 if arr.dtype == np.uint8 else 0.5)


def subject_tensor(subject_image: PIL.Image.Image, subject_mask: ImageInput | None,
                   size: int | None = None) -> torch.Tensor:
    """The subject as LAR-Gen sees it: white ground, cropped to its mask, padded square, ``[1, 3, side, side]`` in
    [-1, 1]; at its own resolution (``size`` None, what the released CLIP input is resized from) or ``size``."""
    square = prepare_subject(to_rgb(subject_image), _mask_array(subject_mask))
    return pil_to_tensor(square if size is None else square.resize((size, size), PIL.Image.BICUBIC))[None]


class LarGenInpaintPipeline(DiffusionPipeline):
    """Components: ``vae``, ``text_encoder``, ``tokenizer`` (None: tiny byte ids), ``unet`` (9-channel, trained),
    ``assign`` (:class:`AssignAdapter`), ``image_encoder`` (CLIP ViT-H/14), ``scheduler`` (DDIM trailing),
    ``refine`` (:class:`RefineNet`, optional), ``decoder`` (:class:`AsukaDecoder`, optional); on SDXL (the released
    LAR-Gen) also ``text_encoder_2``/``tokenizer_2``, whose presence is the only SDXL switch: the prompt conditions
    come from :mod:`asuka.models.backbones.sdxl` (two encoders, pooled vector, size ids)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->refine->unet->vae->decoder"
    _optional_components = ["tokenizer", "refine", "decoder", "text_encoder_2", "tokenizer_2"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer | None,
        unet: UNet2DConditionModel,
        assign: AssignAdapter,
        image_encoder: CLIPVisionModelWithProjection,
        scheduler: KarrasDiffusionSchedulers,
        refine: RefineNet | None = None,
        decoder: AsukaDecoder | None = None,
        text_encoder_2: CLIPTextModelWithProjection | None = None,
        tokenizer_2: CLIPTokenizer | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, assign=assign,
                              image_encoder=image_encoder, scheduler=scheduler, refine=refine, decoder=decoder,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.net = LarGenNet(unet, assign)  # installs the processors; holds no weights of its own
        self.vae_scale_factor = vae_scale_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    @property
    def default_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def _decode(self, latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.decoder, self.vae, latents / self.vae.config.scaling_factor, image, mask)

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        prompt: str = "",
        subject_image: PIL.Image.Image | None = None,
        subject_mask: ImageInput | None = None,
        image_scale: float = 1.0,
        guidance_scale: float = GUIDANCE_SCALE,
        guidance_rescale: float = GUIDANCE_RESCALE,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        size: int | None = None,
        crop: bool = True,
        paste_back: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Inpaint the hole (mask 1) of one ``image`` guided by ``prompt`` and/or ``subject_image`` (+ its mask).

        With both a prompt and a subject the hole is the mask's bounding box (released LAR-Gen).
        ``image_scale`` is Assign's lambda (0 ignores the subject's tokens); ``size`` the working resolution (default
        the UNet's); ``crop`` works on the square crop around the mask and pastes the result back into the full
        image (otherwise the whole image is resized to ``size``), as released: the crop of :func:`released_crop_box`,
        padded square, resized bilinearly, and put back by :func:`crop_back`. ``paste_back`` (our choice) keeps the
        known pixels of the input exactly; without it the whole pasted crop is the decoder's output, as released
        (what background metrics should see).
        """
        inputs = prepare_inputs(image, mask_image, self.image_processor, self.mask_processor)
        # released: the zoom-in crop is cut from the image at its own size (it is resized to the working size anyway),
        # not from the image rounded to the VAE factor
        scene, mask = inputs.output_image, inputs.output_mask
        if scene.shape[0] != 1:
            raise AsukaError("LarGenInpaintPipeline inpaints one image per call")
        if not prompt and subject_image is None:
            raise AsukaError("give a prompt, a subject image, or both")
        size = int(size or self.default_size)
        box = mask_box(mask[0, 0].numpy() > 0.5)
        if box is None:  # nothing to fill
            images = self.image_processor.postprocess(scene, output_type=output_type)
            return ImagePipelineOutput(images=images) if return_dict else (images,)
        height, width = scene.shape[-2:]
        x0, y0, x1, y1 = released_crop_box(mask[0, 0].numpy() > 0.5) if crop else (0, 0, width, height)
        part, part_mask = scene[..., y0:y1, x0:x1], mask[..., y0:y1, x0:x1]
        if prompt and subject_image is not None:
            # released use_rectangle_mask: the crop mask's box is filled, except its last row and column (scepter
            # fills [y1:y2) with y2 the box's last index)
            bx0, by0, bx1, by1 = mask_box(part_mask[0, 0].numpy() > 0.5)
            part_mask = part_mask.clone()
            part_mask[..., by0 : by1 - 1, bx0 : bx1 - 1] = 1.0
        padded, padded_mask, pads = pad_square(part, part_mask)  # released: a crop cut by the border is padded
        work = F.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False)  # cv2.resize linear
        work_mask = (F.interpolate(padded_mask, size=(size, size), mode="bilinear", align_corners=False) > 0.5).float()
        subject = None if subject_image is None else subject_tensor(subject_image, subject_mask)
        result = self.sample(work, work_mask, prompt, subject, image_scale, guidance_scale, guidance_rescale,
                             num_inference_steps, generator, eta)
        patch, (px0, py0, px1, py1) = crop_back(result.cpu().float().clamp(-1, 1), part.shape[-2:], pads)
        if paste_back:  # our choice: the input's known pixels exactly (released pastes the whole decoded crop)
            keep = part_mask[..., py0:py1, px0:px1]
            patch = patch * keep + part[..., py0:py1, px0:px1] * (1 - keep)
        out = scene.clone()
        out[..., y0 + py0 : y0 + py1, x0 + px0 : x0 + px1] = patch
        images = self.image_processor.postprocess(out, output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @torch.no_grad()
    def outpaint(
        self,
        image: PIL.Image.Image,
        prompt: str,
        ratio: float = OUTPAINT_RATIO,
        direction: str = OUTPAINT_DIRECTIONS[0],
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = GUIDANCE_SCALE,
        guidance_rescale: float = GUIDANCE_RESCALE,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
        paste_back: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Text-guided outpainting as released: ``image`` scaled to ``ratio`` of a ``height x width`` black canvas
        (default the UNet's size, as the release samples at its output size) at ``direction``, the hole the canvas
        minus the image's inner part (:func:`outpaint_canvas`); the whole canvas is sampled (no zoom-in crop) and
        returned. ``paste_back`` (our choice) keeps the scaled image's known pixels; released returns the decoded
        canvas as it is."""
        if not prompt:
            raise AsukaError("text-guided outpainting needs a prompt")
        height, width = int(height or self.default_size), int(width or self.default_size)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise AsukaError(f"outpainting canvas {width}x{height}: both sides must be multiples of "
                             f"{self.vae_scale_factor}")
        canvas, hole = outpaint_canvas(np.asarray(to_rgb(image)), height, width, ratio, direction)
        work = pil_to_tensor(PIL.Image.fromarray(canvas))[None]
        work_mask = torch.from_numpy(hole)[None, None].float()
        result = self.sample(work, work_mask, prompt, None, 1.0, guidance_scale, guidance_rescale,
                             num_inference_steps, generator, eta).cpu().float().clamp(-1, 1)
        if paste_back:
            result = result * work_mask + work * (1 - work_mask)
        images = self.image_processor.postprocess(result, output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def sample(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        prompt: str,
        subject: torch.Tensor | None,
        image_scale: float = 1.0,
        guidance_scale: float = GUIDANCE_SCALE,
        guidance_rescale: float = GUIDANCE_RESCALE,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        eta: float = 0.0,
    ) -> torch.Tensor:
        """The sampler on prepared tensors (``image`` ``[1,3,S,S]`` and the square ``subject`` ``[1,3,s,s]`` in
        [-1,1], ``mask`` 1 = hole): the decoded result in [-1, 1], known region not yet pasted. CLIP reads the subject
        at its own size (released); the RefineNet's latent is taken at ``S``. Training validation calls it
        directly."""
        device, dtype = self._execution_device, self.unet.dtype
        do_cfg = guidance_scale > 1.0
        repeat = 2 if do_cfg else 1
        prompts = ["", prompt] if do_cfg else [prompt]
        text, added = prompt_conditions(self, prompts, image.shape[-2:])
        text = text.to(dtype)
        image_embeds = clip_last = None
        if subject is not None:
            # Released (largen_inference.py): the unconditional branch zeroes only the Assign input (ref_ip); it keeps
            # the real subject's CLIP details (ref_detail) and its latent for the RefineNet reference (ref_x0).
            pixels = clip_pixels(subject.to(device), self.image_encoder)
            image_embeds, _ = image_hidden_states(self.image_encoder,
                                                  torch.cat([torch.zeros_like(pixels), pixels]) if do_cfg else pixels)
            clip_last = image_hidden_states(self.image_encoder, pixels)[1].repeat(repeat, 1, 1)
        image, mask = image.to(device), mask.to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latent_shape = (1, self.vae.config.latent_channels, *(s // self.vae_scale_factor for s in image.shape[-2:]))
        latents = randn_tensor(latent_shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        _, masked_latents = encode_masked_image(self.vae, image, mask, generator=generator)
        mask_latent = released_latent_mask(mask, latent_shape[-2:]).to(dtype)
        source = encode_latents(self.vae, image, generator=generator).to(dtype)
        refine = self.refine if subject is not None else None
        if refine is not None:
            at_size = F.interpolate(subject.float(), size=image.shape[-2:], mode="bilinear", antialias=True,
                                    align_corners=False) if subject.shape[-2:] != image.shape[-2:] else subject
            subject_latents = encode_latents(self.vae, at_size.to(device), generator=generator).to(dtype)
            refine_added = refine_conditions(self, repeat, image.shape[-2:])
        conditions = [c.to(dtype).repeat(repeat, 1, 1, 1) for c in (mask_latent, masked_latents)]
        timesteps = self.scheduler.timesteps
        step_kwargs = AsukaInpaintPipeline._step_kwargs(self, generator, eta)
        for i, t in enumerate(self.progress_bar(timesteps)):
            # Locate (released diffusion.py model_fn): before every model call, from the first, the known region is
            # the source latent noised to t with fresh noise.
            known = self.scheduler.add_noise(source, randn_tensor(latent_shape, generator=generator, device=device,
                                                                  dtype=dtype), t.reshape(1))
            latents = known * (1 - mask_latent) + latents * mask_latent
            model_in = self.scheduler.scale_model_input(latents.repeat(repeat, 1, 1, 1), t)
            bank = None
            if refine is not None:  # released: the subject latent noised to t, fresh noise per step and per branch
                subject_noise = randn_tensor((repeat, *latent_shape[1:]), generator=generator, device=device,
                                             dtype=dtype)
                noisy_subject = self.scheduler.add_noise(subject_latents.repeat(repeat, 1, 1, 1), subject_noise,
                                                         t.reshape(1))
                bank = refine(noisy_subject, t, clip_last, refine_added)
            eps = self.net(unet_input(model_in, *conditions), t, text, image_embeds, image_scale, bank, None, added)
            if do_cfg:
                uncond, cond = eps.chunk(2)
                eps = uncond + guidance_scale * (cond - uncond)
                if guidance_rescale > 0:
                    eps = rescale_noise_cfg(eps, cond, guidance_rescale=guidance_rescale)
            out = self.scheduler.step(eps, t, latents, **step_kwargs)
            # released DDIM (solvers.py sample_ddim) ends on sigma 0: the last step returns the clean estimate
            latents = out.pred_original_sample if i == len(timesteps) - 1 else out.prev_sample
        return self._decode(latents, image, mask)


def released_latent_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The mask on the latent grid as released LAR-Gen builds it: antialiased bilinear resize, then ``> 0.5``
    (diffusers' inpainting pipelines take the nearest pixel instead)."""
    return (F.interpolate(mask.float(), size=tuple(size), mode="bilinear", antialias=True,
                          align_corners=False) > 0.5).float()
