"""Open-vocabulary boxes with a transformers ``GroundingDinoForObjectDetection``
(``IDEA-Research/grounding-dino-base``)."""
from __future__ import annotations

import torch
from PIL import Image

from asuka.data.largen_engine.hf import load_hf, model_inputs
from asuka.data.largen_engine.stages import Detection


def tag_prompt(tags: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's text ``"tag one. tag two."`` (lower case) and each tag's character span in it."""
    text, spans = "", []
    for tag in tags:
        start = len(text)
        text += tag.lower()
        spans.append((start, len(text)))
        text += ". "
    return text.strip(), spans


class GroundingDinoDetector:
    """One detection per query whose best tag scores at least ``box_threshold``: a tag's score is the highest
    token probability over its tokens (so multi-word tags map back to the tag, never to a merged phrase)."""

    def __init__(self, model: str, box_threshold: float = 0.35, device: str = "cpu", dtype: str = "float16") -> None:
        from transformers import GroundingDinoForObjectDetection

        self.model, self.processor = load_hf(GroundingDinoForObjectDetection, model, device, dtype)
        self.box_threshold = box_threshold

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], tags: list[list[str]]) -> list[list[Detection]]:
        out: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, t in enumerate(tags) if t]
        if not todo:
            return out
        prompts = [tag_prompt(tags[i]) for i in todo]
        batch = self.processor(images=[images[i] for i in todo], text=[p for p, _ in prompts], return_tensors="pt",
                               padding=True)
        result = self.model(**model_inputs(batch, self.model))
        probs = result.logits.float().sigmoid().cpu()  # [B, queries, text tokens]
        boxes = result.pred_boxes.float().cpu()  # [B, queries, (cx, cy, w, h)] relative to the image
        for b, i in enumerate(todo):
            text, spans = prompts[b]
            offsets = self.processor.tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
            token_sets = [[k for k, (s, e) in enumerate(offsets) if e > s and s >= a and e <= z] for a, z in spans]
            per_tag = torch.stack([probs[b][:, ks].max(dim=1).values if ks else torch.zeros(probs.shape[1])
                                   for ks in token_sets], dim=1)  # [queries, tags]
            score, best = per_tag.max(dim=1)
            w, h = images[i].size
            cx, cy, bw, bh = boxes[b].unbind(-1)
            corners = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)
            corners = corners.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=corners.dtype))
            for q in torch.nonzero(score >= self.box_threshold).flatten().tolist():
                out[i].append(Detection(tags[i][int(best[q])], tuple(float(v) for v in corners[q]), float(score[q])))
        return out
