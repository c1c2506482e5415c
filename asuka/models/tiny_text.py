"""The tiny random CLIP text encoders of tests and the demo (SD-1.5 baselines, LAR-Gen, SDXL): one config and one
vocabulary-free tokenisation, on the models floor so the backbones and the pipelines share them."""
from __future__ import annotations

import torch
from transformers import CLIPTextConfig

TINY_VOCAB = 1000
TINY_MAX_LENGTH = 77


def tiny_text_config(hidden_size: int) -> CLIPTextConfig:
    """A two-layer CLIP text config of width ``hidden_size`` whose ids are the byte ids of :func:`tiny_token_ids`."""
    return CLIPTextConfig(vocab_size=TINY_VOCAB, hidden_size=hidden_size, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=TINY_MAX_LENGTH, projection_dim=hidden_size,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


def tiny_token_ids(prompt: str) -> torch.Tensor:
    """Fixed token ids for the tiny encoder: BOS, the prompt's UTF-8 bytes (offset past the specials), EOS padding.

    A vocabulary-free CLIPTokenizer maps every word to the same unknown token, so "" and "background" would be
    indistinguishable; bytes keep prompts apart without any vocabulary file.
    """
    body = [3 + b for b in prompt.encode("utf-8")][: TINY_MAX_LENGTH - 2]
    ids = [0, *body, 2]
    ids += [2] * (TINY_MAX_LENGTH - len(ids))
    return torch.tensor([ids])
