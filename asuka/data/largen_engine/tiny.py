"""Tiny random versions of the data engine's transformers models (CLIP, Grounding DINO, SAM, LLaVA), saved as local
folders with processors whose tokenizers are built from small vocabularies, so nothing is downloaded. For the tests,
the benchmark (``model=tiny``) and trying the engine offline."""
from __future__ import annotations

import string
from pathlib import Path

import torch
import transformers as T

WORDS = ["ball", "box", "kite", "vase", "red", "blue", "a", "the", "describe", "in", "one", "short", "phrase."]


def _clip(out: Path) -> None:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + ".,:!?'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    proc = T.CLIPProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                crop_size={"height": 32, "width": 32}),
                           tokenizer=T.CLIPTokenizer(vocab=vocab, merges=[]))
    cfg = T.CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2, bos_token_id=0, eos_token_id=1,
                                        pad_token_id=1),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
    T.CLIPModel(cfg).save_pretrained(out)
    proc.save_pretrained(out)


def _grounding_dino(out: Path) -> None:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", *WORDS])}
    proc = T.GroundingDinoProcessor(
        image_processor=T.GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}),
        tokenizer=T.BertTokenizer(vocab=vocab))
    cfg = T.GroundingDinoConfig(
        backbone_config=T.SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 1, 1], window_size=2,
                                     out_features=["stage2", "stage3", "stage4"]),
        text_config=T.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=3, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, use_timm_backbone=False)
    T.GroundingDinoForObjectDetection(cfg).save_pretrained(out)
    proc.save_pretrained(out)


def _sam(out: Path) -> None:
    proc = T.SamProcessor(image_processor=T.SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16}))
    cfg = T.SamConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, output_channels=16, window_size=2, global_attn_indexes=[1],
                           mlp_dim=32, num_pos_feats=8),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                 iou_head_hidden_dim=16))
    T.SamModel(cfg).save_pretrained(out)
    proc.save_pretrained(out)


LLAVA_PROMPT = "USER: <image>\nDescribe the {} in one short phrase. ASSISTANT:"


def _llava(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:", *WORDS]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                    pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    proc = T.LlavaProcessor(image_processor=T.CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                            num_additional_image_tokens=1)
    cfg = T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8),
        text_config=T.LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                  pad_token_id=3, max_position_embeddings=128),
        image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default")
    T.LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)


def build_tiny_models(root: Path) -> dict[str, str]:
    """Tiny random CLIP, Grounding DINO, SAM and LLaVA folders under ``root``; their paths by stage."""
    torch.manual_seed(0)
    paths = {}
    for stage, build in (("tagger", _clip), ("detector", _grounding_dino), ("segmenter", _sam),
                         ("captioner", _llava)):
        build(root / stage)
        paths[stage] = str(root / stage)
    return paths


def tiny_model_stages(paths: dict[str, str]) -> dict:
    """The engine's stage config for the tiny models (``dtype`` irrelevant on CPU)."""
    return {"tagger": {"kind": "clip", "model": paths["tagger"], "vocabulary": ["ball", "box", "kite", "vase"]},
            "detector": {"kind": "grounding_dino", "model": paths["detector"], "box_threshold": 0.0},
            "segmenter": {"kind": "sam", "model": paths["segmenter"]},
            "captioner": {"kind": "llava", "model": paths["captioner"], "prompt": LLAVA_PROMPT, "max_new_tokens": 4}}
