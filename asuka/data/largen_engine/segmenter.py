"""Box-prompted masks with a transformers ``SamModel`` (``facebook/sam-vit-huge``)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from asuka.data.largen_engine.hf import load_hf, model_inputs


class SamSegmenter:
    """One mask per box (single-mask output, SAM's setting for box prompts) with SAM's predicted IoU as the score.
    The images of a batch are encoded together; their box lists are padded to one length."""

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float16") -> None:
        from transformers import SamModel

        self.model, self.processor = load_hf(SamModel, model, device, dtype)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], boxes: list[list[tuple[float, float, float, float]]]
                 ) -> list[list[tuple[np.ndarray, float]]]:
        out: list[list[tuple[np.ndarray, float]]] = [[] for _ in images]
        todo = [i for i, b in enumerate(boxes) if b]
        if not todo:
            return out
        longest = max(len(boxes[i]) for i in todo)
        padded = [[list(b) for b in boxes[i]] + [list(boxes[i][0])] * (longest - len(boxes[i])) for i in todo]
        batch = self.processor(images=[images[i] for i in todo], input_boxes=padded, return_tensors="pt")
        sizes = (batch.pop("original_sizes"), batch.pop("reshaped_input_sizes"))
        result = self.model(**model_inputs(batch, self.model), multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(result.pred_masks.float().cpu(), *sizes)
        iou = result.iou_scores.float().cpu()
        for b, i in enumerate(todo):
            out[i] = [(masks[b][k, 0].numpy().astype(bool), float(iou[b, k, 0])) for k in range(len(boxes[i]))]
        return out
