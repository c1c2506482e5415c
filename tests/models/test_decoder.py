"""The mask-conditioned decoder: construction from the SD VAE, exact equality with it when the condition is off,
the full forward path (diffusers PR #8378), save/load round trip, and config errors."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from asuka.models.decoder import (
    AsukaDecoder,
    build_decoder,
    copy_sd_vae_weights,
    trainable_decoder_parameters,
)
from asuka.models.sd import build_tiny_sd
from asuka.utils.errors import AsukaError, ConfigError

TINY = dict(
    source="tiny",
    up_block_out_channels=[8, 8, 16, 16],
    layers_per_up_block=1,
    down_block_out_channels=[8, 8, 16, 16],
    layers_per_down_block=1,
    norm_num_groups=8,
)


@pytest.fixture(scope="module")
def vae():
    return build_tiny_sd(0).vae.eval()


@pytest.fixture(scope="module")
def decoder(vae):
    return build_decoder(OmegaConf.create(TINY), vae).eval()


def _batch(seed: int = 0, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, size, size)
    mask[0, :, 16:40, 8:48] = 1
    mask[1, :, 30:, :20] = 1
    return image, mask


def test_copies_every_sd_vae_weight_except_the_condition_encoder(vae, decoder):
    ours, theirs = decoder.state_dict(), vae.state_dict()
    new = [k for k in ours if k not in theirs]
    assert new and all(k.startswith("decoder.condition_encoder.") for k in new)
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    # copying again reports only the condition encoder as left at init
    left = copy_sd_vae_weights(build_decoder(OmegaConf.create(TINY)), vae)
    assert left == sorted(new)


@torch.no_grad()
def test_equals_sd_vae_exactly_when_condition_contributes_nothing(vae, decoder):
    """All-ones mask (everything is hole): every blend h*m + cond*(1-m) is h*1 + cond*0 = h, bit for bit."""
    image, _ = _batch()
    z = vae.encode(image).latent_dist.mode()
    reference = vae.decode(z).sample
    assert torch.equal(decoder.decode(z).sample, reference)  # no condition at all
    all_hole = torch.ones(2, 1, 64, 64)
    assert torch.equal(decoder.decode(z, image=image, mask=all_hole).sample, reference)
    # the full forward path encodes with the (copied, frozen) encoder and decodes the mode
    assert torch.equal(decoder(image, mask=all_hole).sample, vae(image).sample)


@torch.no_grad()
def test_condition_changes_the_output_with_known_pixels(vae, decoder):
    """With known pixels the random condition encoder's features replace the decoder's there: not SD's output."""
    image, mask = _batch()
    z = vae.encode(image).latent_dist.mode()
    out = decoder.decode(z, image=image, mask=mask).sample
    assert not torch.allclose(out, vae.decode(z).sample)
    # ... and the condition really is the image: a different known region gives a different decode
    other = image.flip(-1)
    assert not torch.allclose(out, decoder.decode(z, image=other, mask=mask).sample)


@torch.no_grad()
def test_full_forward_path_with_image_and_mask(decoder):
    """forward(sample, mask) = decode(encode(sample).mode(), image=sample, mask=mask) (diffusers PR #8378)."""
    image, mask = _batch(1)
    out = decoder(image, mask=mask)
    assert out.sample.shape == image.shape and torch.isfinite(out.sample).all()
    z = decoder.encode(image).latent_dist.mode()
    assert torch.equal(out.sample, decoder.decode(z, image=image, mask=mask).sample)
    (tuple_out,) = decoder(image, mask=mask, return_dict=False)
    assert torch.equal(tuple_out, out.sample)
    # sampled posterior with a generator is reproducible
    a = decoder(image, mask=mask, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample
    b = decoder(image, mask=mask, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample
    assert torch.equal(a, b)
    # latents from elsewhere (training): the condition stays the given image
    assert torch.equal(decoder(image, mask=mask, latents=z).sample, out.sample)


def test_forward_gradients_reach_decoder_not_encoder(vae):
    decoder = build_decoder(OmegaConf.create(TINY), vae)
    image, mask = _batch(2)
    decoder(image, mask=mask).sample.square().mean().backward()
    assert all(p.grad is None for p in decoder.encoder.parameters())
    assert all(p.grad is None for p in decoder.quant_conv.parameters())
    cond = decoder.decoder.condition_encoder.layers[0].weight
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert decoder.decoder.conv_out.weight.grad.abs().sum() > 0
    trainable = list(trainable_decoder_parameters(decoder))
    assert {id(p) for p in trainable} == {id(p) for p in decoder.parameters() if p.requires_grad}


def test_input_checks(decoder):
    z = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="both image and mask"):
        decoder.decode(z, image=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="image must be"):
        decoder.decode(z, image=torch.zeros(1, 3, 32, 32), mask=torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask must be"):
        decoder.decode(z, image=torch.zeros(1, 3, 64, 64), mask=torch.zeros(1, 3, 64, 64))


@torch.no_grad()
def test_save_and_load_round_trip(tmp_path, decoder):
    decoder.save_pretrained(tmp_path / "decoder")
    config = (tmp_path / "decoder" / "config.json").read_text()
    assert '"_class_name": "AsukaDecoder"' in config
    loaded = AsukaDecoder.from_pretrained(tmp_path / "decoder")
    ours, theirs = decoder.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights: exact
    image, mask = _batch(4)
    expected = decoder(image, mask=mask).sample
    # outputs (|x| < 4): float noise only (1 vs 2 threads: ~1e-5), another CPU may pick other kernels
    torch.testing.assert_close(loaded(image, mask=mask).sample, expected, rtol=0, atol=1e-4)
    # source: pretrained reads such a folder (e.g. converted Asymmetric VQGAN weights)
    again = build_decoder(OmegaConf.create({**TINY, "source": "pretrained"}), init_path=str(tmp_path / "decoder"))
    assert isinstance(again, AsukaDecoder) and not any(p.requires_grad for p in again.encoder.parameters())
    # a given path (paths.decoder_init) wins over the default source: training starts from those weights
    given = build_decoder(OmegaConf.create(TINY), init_path=str(tmp_path / "decoder"))
    assert all(torch.equal(given.state_dict()[k], ours[k]) for k in ours)
    torch.testing.assert_close(given(image, mask=mask).sample, expected, rtol=0, atol=1e-4)


def test_build_errors(tmp_path, vae):
    with pytest.raises(AsukaError, match=str(tmp_path / "nowhere")):
        build_decoder(OmegaConf.create({**TINY, "source": "pretrained"}), init_path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="paths.decoder_init"):
        build_decoder(OmegaConf.create({**TINY, "source": "pretrained"}))
    with pytest.raises(AsukaError, match="needs the SD VAE"):
        build_decoder(OmegaConf.create({**TINY, "source": "from_sd_vae"}))
    with pytest.raises(ConfigError, match="model.decoder.source"):
        build_decoder(OmegaConf.create({**TINY, "source": "nope"}))
    # diffusers builds layers_per_up_block + 1 resnets per level: 2 here would not take the VAE's weights
    with pytest.raises(ConfigError, match="layers_per_up_block"):
        build_decoder(OmegaConf.create({**TINY, "layers_per_up_block": 2}), vae)
    with pytest.raises(ConfigError, match="up_block_out_channels"):
        build_decoder(OmegaConf.create({**TINY, "up_block_out_channels": [8, 8, 16, 32]}), vae)


def test_paper_config_builds_from_the_sd15_vae():
    """configs/model/paper.yaml must take SD-1.5's VAE (layers_per_block 2 -> 3 resnets per up level; diffusers'
    MaskConditionDecoder builds layers_per_up_block + 1 resnets, so the key must be 2). Built on the meta device."""
    from pathlib import Path

    from diffusers import AutoencoderKL

    cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "paper.yaml").decoder
    with torch.device("meta"):
        sd15_vae = AutoencoderKL(  # SD-1.5 vae/config.json
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
        )
        decoder = build_decoder(cfg, sd15_vae)
    assert all(len(block.resnets) == 3 for block in decoder.decoder.up_blocks)
