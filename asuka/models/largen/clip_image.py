"""The frozen CLIP ViT-H/14 image encoder of LAR-Gen and the one subject preprocessing of training and inference.

Assign reads the penultimate hidden states (IP-Adapter-Plus), Refine's detail encoder the last hidden state. The
encoder is ``transformers.CLIPVisionModelWithProjection`` from a local folder or hub id (``h94/IP-Adapter`` ships it
as ``models/image_encoder``), or a tiny random one for tests and the demo.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from asuka.utils.config import cfg_get, is_given
from asuka.utils.errors import AsukaError, ConfigError

SUBJECT_PAD = 1.02  # released LAR-Gen inference: the subject box padded square at 1.02x
SUBJECT_MIN_PIXELS = 10  # released get_bbox_from_mask: a smaller mask keeps the whole image


def build_image_encoder(cfg: Any, path: str | os.PathLike | None = None) -> CLIPVisionModelWithProjection:
    """``cfg`` is ``model.largen.image_encoder``: ``source: pretrained`` reads ``path`` (local folder or hub id;
    ``subfolder`` e.g. ``models/image_encoder`` of ``h94/IP-Adapter``), ``source: tiny`` builds a random one."""
    source = cfg_get(cfg, "source", "pretrained")
    if source == "tiny":
        config = CLIPVisionConfig(
            hidden_size=int(cfg_get(cfg, "hidden_size")),
            intermediate_size=int(cfg_get(cfg, "intermediate_size")),
            num_hidden_layers=int(cfg_get(cfg, "num_hidden_layers")),
            num_attention_heads=int(cfg_get(cfg, "num_attention_heads")),
            image_size=int(cfg_get(cfg, "image_size")),
            patch_size=int(cfg_get(cfg, "patch_size")),
            projection_dim=int(cfg_get(cfg, "hidden_size")),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg_get(cfg, "seed", 0)))
            encoder = CLIPVisionModelWithProjection(config)
    elif source == "pretrained":
        if not is_given(path):
            raise ConfigError("largen.image_encoder", "no CLIP image encoder given (a local folder or a hub id)")
        path = os.path.expanduser(str(path))
        subfolder = cfg_get(cfg, "subfolder", None) or ""
        if Path(path).exists() and not (Path(path) / subfolder / "config.json").is_file():
            raise AsukaError(f"{Path(path) / subfolder}: no CLIP image encoder (config.json) there")
        try:
            encoder = CLIPVisionModelWithProjection.from_pretrained(path, subfolder=subfolder)
        except (OSError, ValueError) as exc:
            raise AsukaError(f"{path}: cannot load the CLIP image encoder ({str(exc).splitlines()[0]})") from None
    else:
        raise ConfigError("model.largen.image_encoder.source", f"unknown source '{source}' (pretrained | tiny)")
    return encoder.eval().requires_grad_(False)


def clip_pixels(images: torch.Tensor, encoder: CLIPVisionModelWithProjection) -> torch.Tensor:
    """Square subjects ``[B, 3, H, W]`` in [-1, 1] -> the encoder's input: resized straight to its size, bilinear
    with antialiasing, then CLIP-normalised, as released (``largen_ui.py``: ``ToTensor, Resize((224, 224)),
    Normalize`` on the padded subject at its own resolution; torchvision's tensor resize is this interpolation)."""
    size = int(encoder.config.image_size)
    x = (images.float() + 1) / 2
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(encoder.dtype)


def image_hidden_states(
    encoder: CLIPVisionModelWithProjection, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(penultimate, last)`` hidden states ``[B, tokens, width]``: Assign's and Refine's inputs."""
    out = encoder(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2], out.last_hidden_state


def prepare_subject(image: Image.Image, mask: np.ndarray | None = None, pad: float = SUBJECT_PAD) -> Image.Image:
    """White background outside ``mask`` (bool HxW, True = subject), cropped to the mask's box and padded square,
    centred, with white to ``int(pad * the crop's longer side)``; the whole image when the mask is None or has fewer
    than :data:`SUBJECT_MIN_PIXELS` pixels. As released (``largen_ui.py`` with ``get_bbox_from_mask``): the box's
    ``y2``/``x2`` are the last masked row/column and the crop ``[y1:y2, x1:x2]`` leaves them out; a degenerate
    one-row/column box keeps that row/column, and a too small mask is not applied (the release whitens all but its
    few pixels): our choices."""
    rgb = np.asarray(image.convert("RGB"))
    if mask is not None and mask.sum() >= SUBJECT_MIN_PIXELS:
        if mask.shape != rgb.shape[:2]:
            raise AsukaError(f"subject mask {mask.shape} and subject image {rgb.shape[:2]} differ in size")
        rgb = np.where(mask[..., None], rgb, np.uint8(255))
        ys, xs = np.nonzero(mask)
        y0, x0 = ys.min(), xs.min()
        rgb = rgb[y0 : max(ys.max(), y0 + 1), x0 : max(xs.max(), x0 + 1)]
    h, w = rgb.shape[:2]
    side = max(1, int(max(h, w) * pad))
    canvas = np.full((side, side, 3), 255, dtype=np.uint8)
    y0, x0 = (side - h) // 2, (side - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = rgb
    return Image.fromarray(canvas)
