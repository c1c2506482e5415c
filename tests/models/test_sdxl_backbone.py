"""The SDXL inpainting backbone (model.backbone: sdxl): tiny random parts written in the real diffusers layout load
back through the one frozen loader, and its conditions (two text encoders, pooled vector, time ids) and UNet call
agree with diffusers' own StableDiffusionXLInpaintPipeline."""
from __future__ import annotations

import json

import pytest
import torch
from diffusers import StableDiffusionXLInpaintPipeline
from transformers import CLIPTokenizer

from asuka.models import sd
from asuka.models.backbones import get_backbone, sdxl
from asuka.utils.errors import AsukaError

TINY = {"source": "tiny", "seed": 0}
ALL = sdxl.SDXL_SUBFOLDERS + sdxl.SDXL_TEXT_PARTS


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """Tiny SDXL inpainting parts saved as a diffusers folder (vocabulary-free tokenizers)."""
    path = tmp_path_factory.mktemp("sdxl")
    tiny = sdxl.build_tiny_sdxl(0)
    for name in ("unet", "vae", "scheduler", "text_encoder", "text_encoder_2"):
        getattr(tiny, name).save_pretrained(path / name)
    for name in ("tokenizer", "tokenizer_2"):
        CLIPTokenizer(model_max_length=77).save_pretrained(path / name)
    return str(path)


def test_tiny_sdxl_conventions():
    bb = get_backbone("sdxl")
    comps = bb.load(TINY, None)
    assert comps.text_encoder is None and comps.tokenizer is None  # ASUKA's parts only, unless asked
    assert comps.unet.config.in_channels == 9 and comps.unet.config.addition_embed_type == "text_time"
    assert comps.vae.config.scaling_factor == 0.13025
    cfg = comps.scheduler.config
    assert (cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.prediction_type) == (
        0.00085, 0.012, "scaled_linear", "epsilon")
    shapes = bb.condition_shapes(comps)
    assert (shapes.token_dim, shapes.pooled_dim) == (32, 16)


def test_sdxl_loads_a_diffusers_folder_and_encodes_prompts_as_diffusers(folder):
    comps = sdxl.load_sdxl_inpaint({"source": "pretrained", "dtype": "float32"}, folder, parts=ALL)
    tiny = sdxl.build_tiny_sdxl(0)
    for name in ("unet", "vae", "text_encoder_2"):
        a, b = getattr(tiny, name).state_dict(), getattr(comps, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not any(p.requires_grad for p in getattr(comps, name).parameters())
    pipe = StableDiffusionXLInpaintPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, text_encoder_2=comps.text_encoder_2,
        tokenizer=comps.tokenizer, tokenizer_2=comps.tokenizer_2, unet=comps.unet, scheduler=comps.scheduler,
        requires_aesthetics_score=False)
    prompts = ["a red fox", "a bench"]
    want_tokens, _, want_pooled, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    tokens, pooled = sdxl.encode_prompt(comps, prompts)
    torch.testing.assert_close(tokens, want_tokens, rtol=0, atol=0)
    torch.testing.assert_close(pooled, want_pooled, rtol=0, atol=0)

    # The UNet call: diffusers' time ids for a 64 x 48 image and its added_cond_kwargs.
    want_ids, _ = pipe._get_add_time_ids((64, 48), (0, 0), (64, 48), 6.0, 2.5, (64, 48), (0, 0), (64, 48),
                                         torch.float32, text_encoder_projection_dim=16)
    assert torch.equal(sdxl.time_ids(64, 48, 2), want_ids.repeat(2, 1))
    gen = torch.Generator().manual_seed(0)
    model_in = torch.randn(2, 9, 8, 6, generator=gen)
    t = torch.tensor([999, 20])
    want = comps.unet(model_in, t, encoder_hidden_states=want_tokens,
                      added_cond_kwargs={"text_embeds": want_pooled, "time_ids": want_ids.repeat(2, 1)}).sample
    got = get_backbone("sdxl").predict(comps, comps.unet, model_in, t, (tokens, pooled))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    only_text = sdxl.load_sdxl_inpaint({"source": "pretrained"}, folder, parts=("tokenizer_2", "text_encoder_2"))
    assert only_text.unet is None and only_text.text_encoder_2 is not None


def test_sdxl_training_prediction_is_the_sd_objective_with_sdxl_conditions():
    bb = get_backbone("sdxl")
    comps = bb.load(TINY, None)
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:40, 16:48] = 1
    inputs = bb.training_inputs(comps, image, mask)
    conditions = bb.head_conditions({"alignment": torch.randn(1, 5, 32), "alignment_clip": torch.randn(1, 5, 16)})
    assert conditions[1].shape == (1, 16)
    torch.manual_seed(3)
    pred, target = bb.training_prediction(comps, comps.unet, inputs, conditions, None)
    torch.manual_seed(3)  # the same draws, in the same order, by hand
    noise = torch.randn(inputs["x0"].shape)
    t = torch.randint(0, 1000, (1,))
    noisy = comps.scheduler.add_noise(inputs["x0"], noise, t)
    model_in = sd.unet_input(noisy, inputs["mask_latent"], inputs["masked_latents"])
    want = comps.unet(model_in, t, encoder_hidden_states=conditions[0],
                      added_cond_kwargs={"text_embeds": conditions[1], "time_ids": sdxl.time_ids(64, 64, 1)}).sample
    assert torch.equal(target, noise)
    torch.testing.assert_close(pred, want, rtol=0, atol=0)


def test_sdxl_folder_errors_are_one_line(tmp_path):
    with pytest.raises(AsukaError, match="missing unet/config.json"):
        sdxl.load_sdxl_inpaint({"source": "pretrained"}, str(tmp_path))
    sd.load_sd_inpaint(TINY, None).unet.save_pretrained(tmp_path / "unet")  # 9 channels, but no SDXL conditions
    with pytest.raises(AsukaError, match="unet/ is not an SDXL UNet"):
        sdxl.load_sdxl_inpaint({"source": "pretrained"}, str(tmp_path), parts=("unet",))


def test_sdxl_second_tokenizer_reads_exclamation_marks_as_open_clip(tmp_path):
    """Released (open_clip.tokenize for bigG): "!" is an ordinary character, "!</w>" after BPE; SDXL's tokenizer_2
    pads with "!" and would split it out as that special token (id 0). Ids written here by hand for a 5-token vocab."""
    vocab = {"!": 0, "a</w>": 1, "!</w>": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer_2 = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), pad_token="!",
                                model_max_length=77)
    tiny = sdxl.build_tiny_sdxl(0)
    seen = []
    tiny.text_encoder_2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    sdxl.encode_prompt(sdxl.SDXLComponents(None, None, None, tiny.text_encoder, tiny.text_encoder_2, None,
                                           tokenizer_2), ["a!"])
    assert seen[0].tolist() == [[3, 1, 2, 4] + [0] * 73]
