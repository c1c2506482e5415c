"""Subject and text metrics of prompted inpainting: CLIP-I, DINO (generated region vs subject) and CLIP-T (generated
region vs prompt), as DreamBooth defines them, plus background PSNR/LPIPS over the known pixels.

CLIP: the full ``CLIPModel`` of ``paths.clip`` (openai/clip-vit-large-patch14, the folder the ASUKA-FLUX CLIP metric
reads; DreamBooth used ViT-B/32, so absolute numbers differ from its paper), images through OpenAI's preprocess
(:func:`asuka.eval.clip_score.clip_preprocess`). DINO: ``ViTModel`` of ``paths.dino`` (facebook/dino-vits16), the CLS
token, images resized to 224 with ImageNet statistics. ``metrics.weights=random`` builds tiny random towers (plumbing).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from asuka.data.images import IMAGENET_MEAN, IMAGENET_STD
from asuka.eval.clip_score import clip_preprocess, clip_weights_folder, cosine
from asuka.models.largen.crop import mask_box
from asuka.utils.weights import transformers_folder

DINO_SIZE = 224


def dino_weights_folder(folder: str | os.PathLike | None) -> Path:
    """The local DINO folder of ``paths.dino``; ConfigError before any work when it is missing."""
    return transformers_folder(folder, "paths.dino", "DINO", "facebook/dino-vits16")


def generated_region(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The box of the hole cut from ``image`` (``HxWx3`` uint8): what is compared with the subject and prompt."""
    box = mask_box(hole)
    if box is None:
        return image
    x0, y0, x1, y1 = box
    return image[y0:y1, x0:x1]


class SubjectScorer:
    """CLIP-I, CLIP-T and DINO of a batch of (generated region, subject, prompt)."""

    def __init__(self, weights: str, clip_folder: str | None, dino_folder: str | None,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

        self.device = torch.device(device)
        if weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                text = dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=2,
                            pad_token_id=1)
                vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                              image_size=224, patch_size=32)
                self.clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
                self.dino = ViTModel(ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=DINO_SIZE, patch_size=32),
                                     add_pooling_layer=False)
            self.tokenizer = None
            self.info = {"clip": "random tiny CLIP", "dino": "random tiny ViT", "weights": "random"}
        else:
            clip_path, dino_path = clip_weights_folder(clip_folder), dino_weights_folder(dino_folder)
            self.clip, self.tokenizer = CLIPModel.from_pretrained(str(clip_path)), CLIPTokenizer.from_pretrained(str(clip_path))
            self.dino = ViTModel.from_pretrained(str(dino_path), add_pooling_layer=False)
            self.info = {"clip": str(clip_path), "dino": str(dino_path), "weights": "pretrained"}
        self.clip = self.clip.eval().requires_grad_(False).to(self.device)
        self.dino = self.dino.eval().requires_grad_(False).to(self.device)

    def _dino_input(self, image: np.ndarray) -> torch.Tensor:
        img = PIL.Image.fromarray(image).resize((DINO_SIZE, DINO_SIZE), PIL.Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]

    def _text_ids(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            from asuka.models.tiny_text import tiny_token_ids

            return torch.cat([tiny_token_ids(p) for p in prompts])
        return self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def __call__(self, regions: list[np.ndarray], subjects: list[np.ndarray], prompts: list[str]) -> dict[str, np.ndarray]:
        """Per-sample ``clip_i``, ``dino`` and ``clip_t`` (NaN where the prompt is empty) of uint8 ``HxWx3`` images."""
        n = len(regions)
        clip_in = torch.stack([clip_preprocess(x) for x in regions + subjects]).to(self.device)
        image_embeds = self.clip.get_image_features(pixel_values=clip_in)
        image_embeds = getattr(image_embeds, "pooler_output", image_embeds)
        dino_in = torch.stack([self._dino_input(x) for x in regions + subjects]).to(self.device)
        cls = self.dino(pixel_values=dino_in).last_hidden_state[:, 0]
        text_embeds = self.clip.get_text_features(input_ids=self._text_ids(prompts).to(self.device))
        text_embeds = getattr(text_embeds, "pooler_output", text_embeds)
        clip_t = cosine(image_embeds[:n], text_embeds)
        clip_t[[p == "" for p in prompts]] = np.nan
        return {"clip_i": cosine(image_embeds[:n], image_embeds[n:]), "dino": cosine(cls[:n], cls[n:]),
                "clip_t": clip_t}


def background_psnr(pred: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """PSNR ``[B]`` (dB) over the known pixels only (``known [B,1,H,W]`` 1 = known) of [0, 1] images."""
    weight = known.expand_as(pred)
    mse = (((pred - target) ** 2) * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp(min=1)
    return -10.0 * torch.log10(mse + 1e-7)
