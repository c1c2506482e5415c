"""Instance captions with a transformers ``LlavaForConditionalGeneration`` (``llava-hf/llava-1.5-7b-hf``)."""
from __future__ import annotations

import torch
from PIL import Image

from asuka.data.largen_engine.hf import load_hf, model_inputs


class LlavaCaptioner:
    """Greedy decoding of ``prompt.format(tag)`` (it holds LLaVA's ``<image>``) on each subject cut-out, batched with
    left padding; the reply is the caption."""

    def __init__(self, model: str, prompt: str, max_new_tokens: int = 32, device: str = "cpu",
                 dtype: str = "float16") -> None:
        from transformers import LlavaForConditionalGeneration

        self.model, self.processor = load_hf(LlavaForConditionalGeneration, model, device, dtype)
        self.processor.tokenizer.padding_side = "left"
        self.prompt, self.max_new_tokens = prompt, int(max_new_tokens)

    @torch.no_grad()
    def __call__(self, subjects: list[Image.Image], tags: list[str]) -> list[str]:
        if not subjects:
            return []
        batch = self.processor(images=subjects, text=[self.prompt.format(t) for t in tags], return_tensors="pt",
                               padding=True)
        tokens = self.model.generate(**model_inputs(batch, self.model), max_new_tokens=self.max_new_tokens,
                                     do_sample=False)
        replies = self.processor.batch_decode(tokens[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [r.strip() for r in replies]
