"""Frozen SD-1.5 inpainting loading and the 9-channel UNet input shared by training and the pipeline."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionInpaintPipeline

from asuka.models.sd import (
    SDComponents,
    build_inference_scheduler,
    build_tiny_sd,
    encode_latents,
    encode_masked_image,
    load_sd_inpaint,
    unet_input,
    vae_scale_factor,
)
from asuka.utils.errors import AsukaError, ConfigError

TINY_CFG = {"source": "tiny", "dtype": "float32", "seed": 0}
PRETRAINED_CFG = {"source": "pretrained", "dtype": "float32"}


@pytest.fixture(scope="module")
def tiny() -> SDComponents:
    return load_sd_inpaint(TINY_CFG, None)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("sd")
    tiny.unet.save_pretrained(folder / "unet")
    tiny.vae.save_pretrained(folder / "vae")
    tiny.scheduler.save_pretrained(folder / "scheduler")
    return folder


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 8:40, 16:48] = 1
    mask[1, :, 30:60, 0:20] = 1
    return image, mask


def test_tiny_components(tiny) -> None:
    assert tiny.unet.config.in_channels == 9 and tiny.unet.config.out_channels == 4
    assert tiny.unet.config.cross_attention_dim == 32
    assert vae_scale_factor(tiny.vae) == 8 and tiny.vae.config.latent_channels == 4
    for module in (tiny.unet, tiny.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert not hasattr(tiny, "text_encoder")


def test_tiny_is_deterministic_and_leaves_global_rng_alone(tiny) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_sd(0)
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(tiny.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    other = build_tiny_sd(1)
    assert not torch.equal(other.unet.conv_in.weight, tiny.unet.conv_in.weight)


def test_training_schedule_is_sds(tiny) -> None:
    s = tiny.scheduler
    assert isinstance(s, DDPMScheduler)
    c = s.config
    assert (c.num_train_timesteps, c.beta_schedule, c.prediction_type) == (1000, "scaled_linear", "epsilon")
    assert (c.beta_start, c.beta_end, c.steps_offset, c.clip_sample) == (0.00085, 0.012, 1, False)
    ddim = build_inference_scheduler(s.config)
    assert isinstance(ddim, DDIMScheduler)
    assert ddim.config.set_alpha_to_one is False and ddim.config.steps_offset == 1
    assert torch.allclose(ddim.alphas_cumprod, s.alphas_cumprod)
    # a config without set_alpha_to_one still gets SD's value, not DDIM's default
    cfg = {k: v for k, v in dict(s.config).items() if k != "set_alpha_to_one"}
    assert build_inference_scheduler(cfg).config.set_alpha_to_one is False


def test_load_from_local_folder(sd_folder, tiny) -> None:
    sd = load_sd_inpaint(PRETRAINED_CFG, str(sd_folder))
    assert isinstance(sd.scheduler, DDPMScheduler)
    for a, b in zip(sd.unet.state_dict().values(), tiny.unet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(sd.vae.state_dict().values(), tiny.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert not sd.unet.training and not any(p.requires_grad for p in sd.unet.parameters())
    half = load_sd_inpaint({"source": "pretrained", "dtype": "bfloat16"}, str(sd_folder))
    assert half.unet.dtype == torch.bfloat16 and half.vae.dtype == torch.bfloat16


def test_missing_folder_is_a_clear_error(tmp_path, sd_folder) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(AsukaError, match="nope.*unet/, vae/, scheduler/"):
        load_sd_inpaint(PRETRAINED_CFG, str(missing))
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / "config.json").write_text((sd_folder / "unet" / "config.json").read_text())
    with pytest.raises(AsukaError, match="missing vae/config.json, scheduler/scheduler_config.json"):
        load_sd_inpaint(PRETRAINED_CFG, str(partial))


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="model.sd.dtype"):
        load_sd_inpaint({"source": "tiny", "dtype": "float8"}, None)
    with pytest.raises(ConfigError, match="model.sd.source"):
        load_sd_inpaint({"source": "onnx"}, None)
    with pytest.raises(ConfigError, match="paths.sd_inpaint"):
        load_sd_inpaint(PRETRAINED_CFG, None)


def test_encode_masked_image_matches_diffusers(tiny) -> None:
    image, mask = _batch()
    g = torch.Generator().manual_seed(7)
    mask_latent, masked_latents = encode_masked_image(tiny.vae, image, mask, generator=g)
    assert mask_latent.shape == (2, 1, 8, 8) and masked_latents.shape == (2, 4, 8, 8)

    pipe = StableDiffusionInpaintPipeline(
        vae=tiny.vae, text_encoder=None, tokenizer=None, unet=tiny.unet, scheduler=tiny.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref_mask, ref_latents = pipe.prepare_mask_latents(
        mask, image * (mask < 0.5), 2, 64, 64, torch.float32, torch.device("cpu"),
        torch.Generator().manual_seed(7), False,
    )
    assert torch.equal(mask_latent, ref_mask)
    assert torch.allclose(masked_latents, ref_latents, atol=1e-6)
    # the mode of the posterior (for code that wants no sampling noise) is deterministic
    a = encode_latents(tiny.vae, image, sample_mode="mode")
    b = encode_latents(tiny.vae, image, generator=torch.Generator().manual_seed(1), sample_mode="mode")
    assert torch.equal(a, b)


def test_masked_image_holes_do_not_leak(tiny) -> None:
    image, mask = _batch()
    other = image.clone()
    other[mask.expand_as(image) > 0.5] = 0.9  # change only hole pixels
    a = encode_masked_image(tiny.vae, image, mask, sample_mode="mode")
    b = encode_masked_image(tiny.vae, other, mask, sample_mode="mode")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_unet_input_layout() -> None:
    noisy, m, masked = torch.randn(2, 4, 8, 8), torch.rand(2, 1, 8, 8), torch.randn(2, 4, 8, 8)
    x = unet_input(noisy, m, masked)
    assert x.shape == (2, 9, 8, 8)
    assert torch.equal(x[:, :4], noisy) and torch.equal(x[:, 4:5], m) and torch.equal(x[:, 5:], masked)
