"""SD-1.5 inpainting baselines for evaluation ("SD": empty prompt, "SD-text": the prompt "background").

They read the same SD folder as ASUKA (the UNet, VAE and noise schedule through :func:`asuka.models.sd.load_sd_inpaint`,
plus ``text_encoder/`` and ``tokenizer/``, loaded only here), sample with the same DDIM scheduler, and see exactly
the same pixels (:func:`asuka.pipelines.inpaint_io.prepare_inputs`). The call signature is ``AsukaInpaintPipeline``'s, so the
evaluation loop treats every method alike.
"""
from __future__ import annotations

import os
from typing import Any

import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import CLIPTextModel, CLIPTokenizer

from asuka.models.frozen import resolve_dtype
from asuka.models.sd import SDComponents, build_inference_scheduler, load_sd_inpaint
from asuka.models.tiny_text import tiny_text_config, tiny_token_ids
from asuka.pipelines.inpaint_io import (ImageInput, all_empty, check_images_per_prompt, empty_masks_output,
                                        prepare_inputs)
from asuka.utils.config import cfg_get
from asuka.utils.errors import AsukaError

DEFAULT_GUIDANCE = 7.5  # our choice: diffusers' default for SD-1.5 inpainting (the paper does not give it)


def tiny_text_encoder(seed: int = 0, hidden_size: int = 32) -> CLIPTextModel:
    """A small random CLIP text encoder whose width matches the tiny UNet's cross-attention (tests and the demo)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(tiny_text_config(hidden_size)).eval().requires_grad_(False)


class SDInpaintBaseline:
    """SD-1.5 inpainting with a fixed prompt, called like :class:`AsukaInpaintPipeline`.

    The prompt embeddings are computed once at load time. With the empty prompt (the "SD" baseline) the conditional
    and unconditional branches are identical, so CFG is skipped (``guidance_scale`` has no effect).
    """

    def __init__(
        self,
        pipe: StableDiffusionInpaintPipeline,
        prompt: str,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor,
    ) -> None:
        self.pipe = pipe
        self.prompt = prompt
        self.prompt_embeds = prompt_embeds
        self.negative_prompt_embeds = negative_prompt_embeds

    @property
    def device(self) -> torch.device:
        return self.pipe.device

    def to(self, *args: Any, **kwargs: Any) -> "SDInpaintBaseline":
        self.pipe.to(*args, **kwargs)
        self.prompt_embeds = self.prompt_embeds.to(self.pipe.device)
        self.negative_prompt_embeds = self.negative_prompt_embeds.to(self.pipe.device)
        return self

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        self.pipe.set_progress_bar_config(**kwargs)

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = DEFAULT_GUIDANCE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        paste_back: bool = True,
        return_dict: bool = True,
        num_images_per_prompt: int = 1,
        strength: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """Same inputs, outputs and conventions as :meth:`AsukaInpaintPipeline.__call__`."""
        pipe = self.pipe
        inputs = prepare_inputs(image, mask_image, pipe.image_processor, pipe.mask_processor, height, width)
        init_image, mask = inputs.image, inputs.mask
        if output_type == "latent":
            raise AsukaError("the SD baselines do not return latents")
        batch = init_image.shape[0]
        check_images_per_prompt(num_images_per_prompt, batch, generator)
        if bool(all_empty(mask).all()):
            return empty_masks_output(pipe, inputs.repeated(num_images_per_prompt), output_type, return_dict)
        if self.prompt == "":
            guidance_scale = 1.0
        out = pipe(
            prompt_embeds=self.prompt_embeds.repeat(batch, 1, 1),
            negative_prompt_embeds=self.negative_prompt_embeds.repeat(batch, 1, 1),
            image=(init_image + 1.0) / 2.0,
            mask_image=mask,
            height=init_image.shape[-2],
            width=init_image.shape[-1],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            eta=eta,
            output_type="pt",
            num_images_per_prompt=num_images_per_prompt,
            strength=strength,
        ).images
        result = inputs.repeated(num_images_per_prompt).finish(out.float() * 2.0 - 1.0, paste_back)
        images = pipe.image_processor.postprocess(result, output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def load_text_parts(path: str, dtype: torch.dtype) -> tuple[CLIPTokenizer, CLIPTextModel]:
    for sub in ("tokenizer", "text_encoder"):
        if os.path.isdir(path) and not os.path.isdir(os.path.join(path, sub)):
            raise AsukaError(f"{path}: missing {sub}/ (the SD baselines need the text encoder and tokenizer)")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype)
    except (OSError, ValueError) as exc:
        raise AsukaError(f"{path}: cannot load the SD text encoder/tokenizer ({str(exc).splitlines()[0]})") from None
    return tokenizer, text_encoder.eval().requires_grad_(False)


def load_sd_baseline(
    path: str | os.PathLike | None,
    prompt: str = "",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    sd_cfg: Any = None,
    sd: SDComponents | None = None,
) -> SDInpaintBaseline:
    """SD-1.5 inpainting baseline with a fixed ``prompt`` ("" = "SD", "background" = "SD-text").

    ``sd_cfg`` is the ``model.sd`` block (default: pretrained weights at ``path``). With ``source: tiny`` the UNet
    and VAE are the tiny random ones and the text encoder a tiny random CLIP fed :func:`tiny_token_ids`. ``sd``
    reuses already loaded components (the evaluation of several methods loads SD once).
    """
    sd_cfg = sd_cfg if sd_cfg is not None else {"source": "pretrained", "dtype": "float32"}
    dtype = resolve_dtype(dtype if dtype is not None else cfg_get(sd_cfg, "dtype", "float32"))
    if sd is None:
        sd = load_sd_inpaint(sd_cfg, path, device=device, dtype=dtype)
    tiny = cfg_get(sd_cfg, "source", "pretrained") == "tiny"
    if tiny:
        text_encoder = tiny_text_encoder(int(cfg_get(sd_cfg, "seed", 0)), int(sd.unet.config.cross_attention_dim))
        text_encoder.to(device=device, dtype=dtype)
        tokenizer = None
    else:
        tokenizer, text_encoder = load_text_parts(os.path.expanduser(str(path)), dtype)
        text_encoder.to(device)
    pipe = StableDiffusionInpaintPipeline(
        vae=sd.vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=sd.unet,
        scheduler=build_inference_scheduler(sd.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with torch.no_grad():
        if tiny:
            embed = lambda text: text_encoder(tiny_token_ids(text).to(text_encoder.device))[0]  # noqa: E731
            prompt_embeds, negative_embeds = embed(prompt), embed("")
        else:
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt, text_encoder.device, 1, True, negative_prompt=""
            )
    return SDInpaintBaseline(pipe, prompt, prompt_embeds.to(dtype), negative_embeds.to(dtype))
