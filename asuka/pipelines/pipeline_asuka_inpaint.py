"""ASUKA inpainting on frozen SD-1.5 inpainting: the aligned MAE prior replaces the CLIP text tokens.

With ``decoder=None`` and ``guidance_scale=1`` the sampling is exactly diffusers' ``StableDiffusionInpaintPipeline``
fed ``prompt_embeds = encode_prior(image, mask_image)``: same pre-processing, same random draws in the same order
(initial noise, then the VAE posterior sample of the masked image), same UNet input. A test holds us to that.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

# The component classes are imported here so that ``from_pretrained`` finds them: diffusers only resolves the
# library named in model_index.json (``asuka.models.mae`` ...) when that module is already imported.
from asuka.data.images import to_gray, to_rgb
from asuka.models.alignment import AlignmentModule, null_prior
from asuka.models.backbones.sdxl import predict as sdxl_predict
from asuka.models.decoder import AsukaDecoder
from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.sd import encode_masked_image, unet_input, vae_scale_factor
from asuka.utils.errors import AsukaError

ImageInput = PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor


def _images_for_processor(image: ImageInput) -> list[PIL.Image.Image] | torch.Tensor:
    """PIL -> RGB PIL list; numpy / tensor -> ``[B,3,H,W]`` float (VaeImageProcessor takes [0, 1], and values
    below 0 as already in [-1, 1])."""
    if isinstance(image, (list, tuple)) and image and isinstance(image[0], PIL.Image.Image):
        return [to_rgb(i) for i in image]
    if isinstance(image, PIL.Image.Image):
        return [to_rgb(image)]
    if isinstance(image, (list, tuple)):
        image = torch.stack([torch.as_tensor(np.asarray(i)) if not isinstance(i, torch.Tensor) else i for i in image])
    if isinstance(image, np.ndarray):
        arr = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3:
            arr = arr[None]
        t = torch.from_numpy(arr).permute(0, 3, 1, 2)
        return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t[:, :3]
    if isinstance(image, torch.Tensor):
        t = image.unsqueeze(0) if image.ndim == 3 else image
        if t.ndim != 4 or t.shape[1] not in (1, 3):
            raise AsukaError(f"image tensor must be [B,3,H,W] or [3,H,W], got {tuple(image.shape)}")
        t = t.float()
        return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t
    raise AsukaError(f"unsupported image type {type(image).__name__} (use PIL, numpy or torch)")


def _masks_for_processor(mask: ImageInput) -> list[PIL.Image.Image] | torch.Tensor:
    """PIL -> 8-bit grayscale PIL list; numpy / tensor -> ``[B,1,H,W]`` float in [0, 1]."""
    if isinstance(mask, (list, tuple)) and mask and isinstance(mask[0], PIL.Image.Image):
        return [to_gray(m) for m in mask]
    if isinstance(mask, PIL.Image.Image):
        return [to_gray(mask)]
    if isinstance(mask, (list, tuple)):
        mask = torch.stack([torch.as_tensor(np.asarray(m)) if not isinstance(m, torch.Tensor) else m for m in mask])
    if isinstance(mask, np.ndarray):
        if mask.dtype == np.uint8:
            mask = mask.astype(np.float32) / 255.0
        mask = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))
        if mask.ndim == 3 and mask.shape[-1] <= 4 < mask.shape[0]:
            mask = mask[..., :1].permute(2, 0, 1)  # HxWxC -> 1xHxW (else taken as BxHxW)
    if isinstance(mask, torch.Tensor):
        m = mask.float()
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m.unsqueeze(1)
        if m.ndim != 4:
            raise AsukaError(f"mask tensor must be [B,1,H,W], [B,H,W] or [H,W], got {tuple(mask.shape)}")
        return m[:, :1]
    raise AsukaError(f"unsupported mask type {type(mask).__name__} (use PIL, numpy or torch)")


def _size_of(x: list[PIL.Image.Image] | torch.Tensor, i: int) -> tuple[int, int]:
    """(height, width) of sample ``i``."""
    if isinstance(x, list):
        return x[i].height, x[i].width
    return int(x.shape[-2]), int(x.shape[-1])


def preprocess_inpaint_inputs(
    image: ImageInput,
    mask_image: ImageInput,
    image_processor: VaeImageProcessor,
    mask_processor: VaeImageProcessor,
    height: int | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ``(image [B,3,h,w] in [-1,1], mask [B,1,h,w] in {0,1})`` as diffusers' inpainting pipeline prepares them.

    Sizes default to the image's; both are rounded down to a multiple of the VAE factor (8). A mask of another
    size than its image is first resized to the image (nearest) with a warning. Shared by ASUKA and the SD
    baselines, so every method sees the same pixels.
    """
    factor = image_processor.config.vae_scale_factor
    images = _images_for_processor(image)
    masks = _masks_for_processor(mask_image)
    n_img = len(images) if isinstance(images, list) else images.shape[0]
    n_mask = len(masks) if isinstance(masks, list) else masks.shape[0]
    if n_mask not in (1, n_img):
        raise AsukaError(f"got {n_img} images but {n_mask} masks")
    for i in range(n_mask):
        ih, iw = _size_of(images, i if n_img > 1 else 0)
        mh, mw = _size_of(masks, i)
        if (ih, iw) != (mh, mw):
            warnings.warn(
                f"mask size {mw}x{mh} differs from image size {iw}x{ih}; resizing the mask (nearest)", stacklevel=3
            )
            if isinstance(masks, list):
                masks[i] = masks[i].resize((iw, ih), PIL.Image.NEAREST)
            else:
                masks = F.interpolate(masks, size=(ih, iw), mode="nearest")
    first = images[0] if isinstance(images, list) else images
    size = first.size if isinstance(first, PIL.Image.Image) else (first.shape[-1], first.shape[-2])
    height, width = image_processor.get_default_height_width(first, height, width)
    if height < factor or width < factor:
        raise AsukaError(f"image is too small: {size[0]}x{size[1]} (needs at least {factor} pixels a side)")
    # VaeImageProcessor.numpy_to_pt returns a channels-last view of the HxWxC arrays: made contiguous (NCHW) here, as
    # the official loaders' batches are, since channels-last conv kernels give other floats (1.7e-2 on FLUX's fill).
    init_image = image_processor.preprocess(images, height=height, width=width).to(torch.float32).contiguous()
    mask = mask_processor.preprocess(masks, height=height, width=width).to(torch.float32).contiguous()
    if mask.shape[0] != init_image.shape[0]:
        mask = mask.repeat(init_image.shape[0] // mask.shape[0], 1, 1, 1)
    return init_image, mask


def all_empty(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: samples with no hole pixel."""
    return mask.flatten(1).amax(dim=1) == 0


def finish(result: torch.Tensor, init_image: torch.Tensor, mask: torch.Tensor, paste_back: bool) -> torch.Tensor:
    """Optional paste-back of the known pixels, and the input itself for samples with an empty mask ([-1,1])."""
    init_image, mask = init_image.to(result), mask.to(result)
    if paste_back:
        result = result * mask + init_image * (1.0 - mask)
    empty = all_empty(mask)
    if bool(empty.any()):
        result = torch.where(empty[:, None, None, None], init_image, result)
    return result


def empty_masks_output(pipe: DiffusionPipeline, init_image: torch.Tensor, output_type: str,
                       return_dict: bool) -> ImagePipelineOutput | tuple:
    """Every mask of the batch is empty: nothing to sample, the inputs are the result."""
    if output_type == "latent":
        raise AsukaError("output_type='latent' with an all-zero mask: nothing to sample")
    images = pipe.image_processor.postprocess(init_image, output_type=output_type)
    return ImagePipelineOutput(images=images) if return_dict else (images,)


def sampled_output(pipe: DiffusionPipeline, latents: torch.Tensor, init_image: torch.Tensor, mask: torch.Tensor,
                   paste_back: bool, output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
    """The end of a sampling call: the latents themselves (``output_type='latent'``), or decoded by the pipeline's
    ``_decode``, finished (paste-back, empty masks) and post-processed."""
    if output_type != "latent":
        device = latents.device
        result = finish(pipe._decode(latents, init_image.to(device), mask.to(device)), init_image, mask, paste_back)
        latents = pipe.image_processor.postprocess(result, output_type=output_type)
    pipe.maybe_free_model_hooks()
    return ImagePipelineOutput(images=latents) if return_dict else (latents,)


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
        paste_back: bool = False,
        return_dict: bool = True,
        timesteps: list[int] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Inpaint the holes (mask 1) of ``image``.

        Args:
            image, mask_image: see the class docstring. Sizes that are not multiples of 8 are rounded down (the
                output has that size); a mask of another size is resized to the image with a warning.
            height, width: processing size, rounded down to multiples of 8; default the image's size.
            num_inference_steps: sampler steps (DDIM 50 by default; spec 7).
            guidance_scale: 1.0 = no CFG (the paper's setting). Above 1, the prior of a fully masked image is the
                unconditional branch.
            generator: seeds the initial noise and the VAE posterior sample, as in diffusers.
            prior_embeds: a precomputed context ``[B, L, D]`` (skips the MAE and alignment); on SDXL (with
                ``alignment_clip``) also ``pooled_prior_embeds [B, P]``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (in [0, 1]) or ``"latent"``.
            paste_back: composite the known pixels of the (preprocessed) input into the result.

        A batch whose masks are all zero returns the input unchanged without sampling (nothing to fill); inside a
        mixed batch, samples with an empty mask are replaced by their input.
        """
        init_image, mask = self.preprocess(image, mask_image, height, width)
        batch_size = init_image.shape[0]
        device = self._execution_device
        if bool(all_empty(mask).all()):
            return empty_masks_output(self, init_image, output_type, return_dict)

        do_cfg = guidance_scale > 1.0
        dtype = self.unet.dtype
        if prior_embeds is not None:
            if self.alignment_clip is not None and pooled_prior_embeds is None:
                raise AsukaError("prior_embeds: this pipeline also needs pooled_prior_embeds (SDXL's pooled vector)")
            cond, pooled = prior_embeds.to(device=device, dtype=dtype), pooled_prior_embeds
        else:
            cond, pooled = self.conditions_from_tensors(init_image, mask)
        if cond.shape[0] != batch_size:
            cond = cond.repeat(batch_size // cond.shape[0], 1, 1)
        if pooled is not None and pooled.shape[0] != batch_size:
            pooled = pooled.repeat(batch_size // pooled.shape[0], 1)
        if do_cfg:
            null_cond, null_pooled = self.encode_null_conditions(batch_size)
            cond = torch.cat([null_cond, cond])
            pooled = None if pooled is None else torch.cat([null_pooled, pooled.to(null_pooled)])

        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)

        # Initial latents: pure noise (strength 1), drawn before the VAE sample, as diffusers does.
        shape = (batch_size, self.vae.config.latent_channels, init_image.shape[-2] // self.vae_scale_factor,
                 init_image.shape[-1] // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma

        mask_latent, masked_image_latents = encode_masked_image(
            self.vae, init_image.to(device=device), mask.to(device=device), generator=generator
        )
        mask_latent = mask_latent.to(device=device, dtype=dtype)
        masked_image_latents = masked_image_latents.to(device=device, dtype=dtype)
        if do_cfg:
            mask_latent = torch.cat([mask_latent] * 2)
            masked_image_latents = torch.cat([masked_image_latents] * 2)

        step_kwargs = self._step_kwargs(generator, eta)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                model_latents = torch.cat([latents] * 2) if do_cfg else latents
                model_latents = self.scheduler.scale_model_input(model_latents, t)
                model_in = unet_input(model_latents, mask_latent, masked_image_latents)
                if pooled is None:
                    noise_pred = self.unet(model_in, t, encoder_hidden_states=cond, return_dict=False)[0]
                else:  # SDXL: the pooled vector and the image's time ids as well
                    noise_pred = sdxl_predict(self.unet, model_in, t, cond, pooled, tuple(init_image.shape[-2:]))
                if do_cfg:
                    uncond, conditional = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (conditional - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = (out or {}).get("latents", latents)
                progress_bar.update()

        return sampled_output(self, latents, init_image, mask, paste_back, output_type, return_dict)
