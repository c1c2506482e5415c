"""Tagging: a fixed-vocabulary CLIP tagger (RAM is not on PyPI) and the tag filter with its blacklist."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import torch
from PIL import Image

from asuka.data.largen_engine.hf import load_hf, model_inputs


def filter_tags(found: list[tuple[str, float]], cfg: Mapping[str, Any], counts: Counter) -> list[tuple[str, float]]:
    """Tags scoring at least ``min_score`` and not in ``blacklist`` (case-insensitive), best ``max_per_image``."""
    counts["tags_found"] += len(found)
    banned = {b.lower() for b in cfg["blacklist"]}
    kept = [(t, s) for t, s in found if t.lower() not in banned]
    counts["tags_blacklist"] += len(kept)
    kept = sorted((ts for ts in kept if ts[1] >= cfg["min_score"]), key=lambda ts: -ts[1])
    counts["tags_score"] += len(kept)
    kept = kept[: int(cfg["max_per_image"])]
    counts["tags_kept"] += len(kept)
    return kept


class ClipTagger:
    """Zero-shot tags over a fixed ``vocabulary`` with a transformers ``CLIPModel`` (e.g.
    ``openai/clip-vit-large-patch14``): score = softmax over the vocabulary of the image-text logits, one prompt
    (``prompt.format(tag)``) per tag."""

    def __init__(self, model: str, vocabulary: Sequence[str], prompt: str = "a photo of a {}.", device: str = "cpu",
                 dtype: str = "float16") -> None:
        from transformers import CLIPModel

        self.model, self.processor = load_hf(CLIPModel, model, device, dtype)
        self.vocabulary = [str(v) for v in vocabulary]
        text = self.processor(text=[prompt.format(t) for t in self.vocabulary], return_tensors="pt", padding=True)
        with torch.no_grad():
            emb = self.model.get_text_features(**model_inputs(text, self.model))
        emb = getattr(emb, "pooler_output", emb)
        self.text = torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        pixels = self.processor(images=images, return_tensors="pt")
        emb = self.model.get_image_features(**model_inputs(pixels, self.model))
        emb = torch.nn.functional.normalize(getattr(emb, "pooler_output", emb).float(), dim=-1)
        probs = (self.model.logit_scale.exp().float() * emb @ self.text.T).softmax(dim=-1).cpu()
        return [list(zip(self.vocabulary, row.tolist())) for row in probs]
