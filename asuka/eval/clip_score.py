"""CLIP: global CLIP image similarity of the filled hole, the last column of the released ASUKA-FLUX table.

What we compute, per image: the hole region alone of the prediction and of the ground truth (``x * mask``, zeros
elsewhere, mask binarised at 0.5), each through OpenAI CLIP's ``preprocess`` (bicubic resize of the shorter side to
224, centre crop, CLIP mean/std) and the ViT-L/14 image tower with its projection; the score is the cosine
similarity of the two embeddings, averaged over images.

How it differs from the released ``eval/cal_clip_score.py``: that script builds the same masked images and
normalised embeddings, then averages each embedding over its feature axis (``torch.mean(feats, axis=1)``), which
leaves one number per image, and takes ``(pred @ gt.T).diagonal()`` of those 1-D vectors, which fails (and with the
last partial batch its ``[:bs]`` split is wrong too). So its column cannot be re-run; the cosine similarity of the
full embeddings is our reading of "CLIP similarity". Its hole is ``mask // 255`` of the 8-bit mask
(:func:`official_hole`: only pure white is hole; ours: >= 128), which differs from ours on grey masks only. Weights: a transformers folder of ``openai/clip-vit-large-patch14``
(``paths.clip``), the same weights as the ``ViT-L-14.pt`` the script loads; ``weights=random`` builds a tiny random
tower (plumbing only).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from asuka.utils.weights import transformers_folder

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP preprocess
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(image: np.ndarray) -> torch.Tensor:
    """``HxWx3`` uint8 -> ``[3, 224, 224]`` as OpenAI CLIP's ``preprocess`` (PIL bicubic resize, centre crop)."""
    img = PIL.Image.fromarray(image)
    w, h = img.size
    # torchvision's Resize(224): the shorter side to 224, the longer one truncated
    nw, nh = (CLIP_SIZE, int(CLIP_SIZE * h / w)) if w <= h else (int(CLIP_SIZE * w / h), CLIP_SIZE)
    img = img.resize((nw, nh), PIL.Image.BICUBIC)
    left, top = int(round((nw - CLIP_SIZE) / 2.0)), int(round((nh - CLIP_SIZE) / 2.0))
    img = img.crop((left, top, left + CLIP_SIZE, top + CLIP_SIZE))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]).contiguous()


def hole_pair(pred: np.ndarray, gt: np.ndarray, hole: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The two CLIP inputs of one image: ``pred * hole`` and ``gt * hole`` (``HxWx3`` uint8, ``hole`` HxW bool)."""
    m = hole[..., None].astype(np.uint8)
    return clip_preprocess(pred * m), clip_preprocess(gt * m)


def official_hole(mask: np.ndarray) -> np.ndarray:
    """``HxW`` bool hole of an 8-bit grey mask as ``eval/cal_clip_score.py`` takes it: ``mask // 255``."""
    return (np.asarray(mask, dtype=np.uint8) // 255).astype(bool)


def clip_weights_folder(folder: str | os.PathLike | None) -> Path:
    """The local CLIP folder of ``paths.clip``; ConfigError before any work when it is missing."""
    return transformers_folder(folder, "paths.clip", "CLIP", "openai/clip-vit-large-patch14")


def build_clip(weights: str, folder: str | os.PathLike | None, device: str | torch.device = "cpu",
               seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The CLIP image tower with projection (transformers ``CLIPVisionModelWithProjection``) and a description."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=CLIP_SIZE, patch_size=32, projection_dim=16))
        info = {"model": "random tiny CLIP tower", "weights": "random"}
    else:
        path = clip_weights_folder(folder)
        model = CLIPVisionModelWithProjection.from_pretrained(str(path))
        info = {"model": str(path), "weights": "pretrained"}
    return model.eval().requires_grad_(False).to(device), info


@torch.no_grad()
def cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Row-wise cosine similarity ``[B]`` of two embedding batches ``[B, D]``, in float32."""
    a, b = a.float(), b.float()
    return ((a / a.norm(dim=-1, keepdim=True)) * (b / b.norm(dim=-1, keepdim=True))).sum(dim=-1).cpu().numpy()


def clip_similarity(model: torch.nn.Module, pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """Cosine similarity ``[B]`` of the CLIP embeddings of two preprocessed batches ``[B, 3, 224, 224]``."""
    device = next(model.parameters()).device
    return cosine(*model(pixel_values=torch.cat([pred, gt]).to(device)).image_embeds.chunk(2))
