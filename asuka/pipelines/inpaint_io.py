"""What every inpainting pipeline does before and after sampling, so that every method sees the same pixels and
gives them back alike: inputs (PIL, numpy or torch) to tensors at a multiple of the VAE factor, as diffusers'
inpainting pipeline prepares them; results pasted back, empty masks answered with the input, and the output given
back at the caller's size."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from asuka.data.images import to_gray, to_rgb
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


def paste(result: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, paste_back: bool) -> torch.Tensor:
    """Optional paste-back of the known pixels, and the input itself for samples with an empty mask ([-1,1])."""
    image, mask = image.to(result), mask.to(result)
    if paste_back:
        result = result * mask + image * (1.0 - mask)
    empty = all_empty(mask)
    if bool(empty.any()):
        result = torch.where(empty[:, None, None, None], image, result)
    return result


@dataclass
class InpaintInputs:
    """One call's inputs at the sampler's size (``image [B,3,h,w]`` in [-1,1], ``mask [B,1,h,w]`` 1 = hole, h and w
    multiples of the VAE factor) and, when the caller's image is not such a size and no size was asked for, the same
    at the caller's size (``full_image``, ``full_mask``): results are given back at that size."""

    image: torch.Tensor
    mask: torch.Tensor
    full_image: torch.Tensor | None = None
    full_mask: torch.Tensor | None = None

    def repeated(self, n: int) -> "InpaintInputs":
        """Each sample ``n`` times in a row (``num_images_per_prompt``)."""
        if n == 1:
            return self
        rep = {k: None if v is None else v.repeat_interleave(n, dim=0) for k, v in vars(self).items()}
        return replace(self, **rep)

    def finish(self, result: torch.Tensor, paste_back: bool) -> torch.Tensor:
        """A sampled ``result`` ([-1,1], the sampler's size) pasted back (optional), empty masks answered with the
        input, at the caller's size."""
        return self.restore(paste(result, self.image, self.mask, paste_back), paste_back)

    def restore(self, result: torch.Tensor, paste_back: bool) -> torch.Tensor:
        """``result`` at the caller's size: resized (bicubic, antialiased) and, with ``paste_back``, the known pixels
        of the caller's image composited at that size."""
        if self.full_image is None:
            return result
        full = F.interpolate(result.float(), size=tuple(self.full_image.shape[-2:]), mode="bicubic",
                             align_corners=False, antialias=True).clamp(-1, 1)
        return paste(full, self.full_image, self.full_mask, paste_back)

    @property
    def output_image(self) -> torch.Tensor:
        """The input as the output would have it (the caller's size)."""
        return self.image if self.full_image is None else self.full_image

    @property
    def output_mask(self) -> torch.Tensor:
        """The mask at the caller's size."""
        return self.mask if self.full_mask is None else self.full_mask


def prepare_inputs(image: ImageInput, mask_image: ImageInput, image_processor: VaeImageProcessor,
                   mask_processor: VaeImageProcessor, height: int | None = None,
                   width: int | None = None) -> InpaintInputs:
    """:func:`preprocess_inpaint_inputs`, and the caller's size kept: without ``height``/``width``, an image that is
    not a multiple of the VAE factor (451x300) is sampled at the rounded size (448x296) and given back at its own."""
    init_image, mask = preprocess_inpaint_inputs(image, mask_image, image_processor, mask_processor, height, width)
    if height is not None or width is not None:
        return InpaintInputs(init_image, mask)
    size = _size_of(_images_for_processor(image), 0)
    if size == tuple(init_image.shape[-2:]):
        return InpaintInputs(init_image, mask)
    exact = {"vae_scale_factor": 1}
    with warnings.catch_warnings():  # the mask-size warning was given once already
        warnings.simplefilter("ignore")
        full_image, full_mask = preprocess_inpaint_inputs(
            image, mask_image, VaeImageProcessor.from_config(image_processor.config, **exact),
            VaeImageProcessor.from_config(mask_processor.config, **exact))
    return InpaintInputs(init_image, mask, full_image, full_mask)


def check_images_per_prompt(n: int, batch: int, generator: torch.Generator | list[torch.Generator] | None) -> None:
    """``num_images_per_prompt`` is a positive integer, and a list of generators has one per output image."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AsukaError(f"num_images_per_prompt={n!r}: expected a positive integer")
    if isinstance(generator, list) and len(generator) != batch * n:
        raise AsukaError(f"generator: a list of {len(generator)} generators for {batch * n} images "
                         f"({batch} inputs x num_images_per_prompt={n}); give one per image, or a single one")


def strength_timesteps(scheduler: Any, timesteps: torch.Tensor, strength: float,
                       flow_matching: bool = False) -> torch.Tensor:
    """The timesteps a ``strength`` below 1 keeps (the last part of the schedule), the scheduler told where it
    starts: ``int(n * strength)`` steps as diffusers' SD inpainting pipeline, ``n - int(n - n * strength)`` as its
    FLUX.1-Fill pipeline (``flow_matching``)."""
    if isinstance(strength, bool) or not 0.0 < float(strength) <= 1.0:
        raise AsukaError(f"strength={strength!r}: expected a value in (0, 1]")
    n = len(timesteps) // scheduler.order
    keep = n - int(n - n * strength) if flow_matching else min(int(n * strength), n)
    if keep < 1:
        raise AsukaError(f"strength={strength} leaves no step of num_inference_steps={n}")
    start = (n - keep) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return timesteps[start:]


def empty_masks_output(pipe: DiffusionPipeline, inputs: InpaintInputs, output_type: str,
                       return_dict: bool) -> ImagePipelineOutput | tuple:
    """Every mask of the batch is empty: nothing to sample, the inputs are the result."""
    if output_type == "latent":
        raise AsukaError("output_type='latent' with an all-zero mask: nothing to sample")
    images = pipe.image_processor.postprocess(inputs.output_image, output_type=output_type)
    return ImagePipelineOutput(images=images) if return_dict else (images,)


def sampled_output(pipe: DiffusionPipeline, latents: torch.Tensor, inputs: InpaintInputs, paste_back: bool,
                   output_type: str, return_dict: bool) -> ImagePipelineOutput | tuple:
    """The end of a sampling call: the latents themselves (``output_type='latent'``), or decoded by the pipeline's
    ``_decode``, finished (:meth:`InpaintInputs.finish`) and post-processed."""
    if output_type != "latent":
        device = latents.device
        decoded = pipe._decode(latents, inputs.image.to(device), inputs.mask.to(device))
        latents = pipe.image_processor.postprocess(inputs.finish(decoded, paste_back), output_type=output_type)
    pipe.maybe_free_model_hooks()
    return ImagePipelineOutput(images=latents) if return_dict else (latents,)
