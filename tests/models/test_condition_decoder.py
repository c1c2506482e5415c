"""The official ASUKA condition path of the decoder (spec 3.1): the mask as a fourth condition channel, blends with the
area-downsampled mask > 0, the SD-VAE equality kept, released 3-channel weights adapted without changing them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from asuka.models.condition_decoder import AsukaMaskConditionDecoder, fusion_mask
from asuka.models.decoder import AsukaDecoder, build_decoder
from asuka.models.sd import build_tiny_sd
from asuka.utils.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose_config  # noqa: E402

AVQ = dict(source="tiny", up_block_out_channels=[8, 8, 16, 16], layers_per_up_block=1,
           down_block_out_channels=[8, 8, 16, 16], layers_per_down_block=1, norm_num_groups=8)
ASUKA = {**AVQ, "condition_mask_channel": True, "fusion_mask": "area_any"}


@pytest.fixture(scope="module")
def vae():
    return build_tiny_sd(0).vae.eval()


def _batch():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 13:37, 9:45] = 1  # edges off the 8-px grid of the lowest level
    mask[1, :, 29:, :21] = 1
    return image, mask


def test_fusion_mask_by_hand():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 1] = 1  # one hole pixel, not one nearest-neighbour picks at 2x2
    assert torch.equal(fusion_mask(mask, (2, 2), "nearest"), torch.zeros(1, 1, 2, 2))
    assert torch.equal(fusion_mask(mask, (2, 2), "area_any"), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    soft = mask * 0.25  # any hole weight marks the whole cell as hole
    assert torch.equal(fusion_mask(soft, (2, 2), "area_any"), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]]))
    with pytest.raises(ValueError, match="fusion mask"):
        fusion_mask(mask, (2, 2), "bilinear")


@torch.no_grad()
def test_still_equals_the_sd_vae_with_an_all_hole_mask(vae):
    decoder = build_decoder(OmegaConf.create(ASUKA), vae).eval()
    assert isinstance(decoder.decoder, AsukaMaskConditionDecoder)
    image, _ = _batch()
    z = vae.encode(image).latent_dist.mode()
    reference = vae.decode(z).sample
    assert torch.equal(decoder.decode(z).sample, reference)
    assert torch.equal(decoder.decode(z, image=image, mask=torch.ones(2, 1, 64, 64)).sample, reference)


@torch.no_grad()
def test_condition_input_is_masked_image_and_mask(vae):
    decoder = build_decoder(OmegaConf.create(ASUKA), vae).eval()
    assert decoder.decoder.condition_encoder.layers[0].in_channels == 4
    seen = []
    decoder.decoder.condition_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image, mask = _batch()
    decoder.decode(vae.encode(image).latent_dist.mode(), image=image, mask=mask)
    expected = torch.cat([torch.where(mask > 0.5, torch.zeros_like(image), image), mask], dim=1)
    assert torch.equal(seen[0], expected)


@torch.no_grad()
def test_first_blend_keeps_decoder_features_wherever_a_cell_touches_the_hole(vae):
    """At the lowest level the blend input is the mid-block output where area-mask > 0 and the condition elsewhere,
    so a cell the hole only partly covers (which nearest would give to the condition) keeps the decoder's value."""
    decoder = build_decoder(OmegaConf.create(ASUKA), vae).eval()
    first_block = decoder.decoder.up_blocks[0]
    inputs = []
    handle = first_block.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    image, mask = _batch()
    z = vae.encode(image).latent_dist.mode()
    decoder.decode(z, image=image, mask=mask)
    decoder.decode(z, image=image, mask=torch.ones_like(mask))  # all hole: the plain decoder features
    handle.remove()
    blended, plain = inputs
    area = fusion_mask(mask, tuple(plain.shape[-2:]), "area_any").expand_as(plain).bool()
    nearest = fusion_mask(mask, tuple(plain.shape[-2:]), "nearest").expand_as(plain).bool()
    assert torch.equal(blended[area], plain[area])
    assert not torch.equal(blended[~area], plain[~area])
    assert (area & ~nearest).any()  # the cells where the two rules differ are among those kept


@torch.no_grad()
def test_released_three_channel_weights_gain_a_zero_mask_channel(tmp_path, vae):
    released = build_decoder(OmegaConf.create(AVQ), vae).eval()  # stands in for Asymmetric VQGAN weights
    released.save_pretrained(tmp_path / "avq")
    same_blend = build_decoder(OmegaConf.create({**ASUKA, "fusion_mask": "nearest"}), init_path=str(tmp_path / "avq"))
    first = same_blend.decoder.condition_encoder.layers[0].weight
    assert first.shape[1] == 4 and torch.equal(first[:, 3], torch.zeros_like(first[:, 3]))
    image, mask = _batch()
    z = vae.encode(image).latent_dist.mode()
    # a 4-channel convolution with a zero 4th channel is another kernel than the 3-channel one: float noise only
    torch.testing.assert_close(same_blend.eval().decode(z, image=image, mask=mask).sample,
                               released.decode(z, image=image, mask=mask).sample, rtol=0, atol=1e-4)
    adapted = build_decoder(OmegaConf.create(ASUKA), init_path=str(tmp_path / "avq"))
    assert adapted.config.condition_mask_channel and adapted.config.fusion_mask == "area_any"
    adapted.save_pretrained(tmp_path / "asuka")
    with pytest.raises(ConfigError, match="model.decoder.condition_mask_channel"):
        build_decoder(OmegaConf.create(AVQ), init_path=str(tmp_path / "asuka"))
    loaded = AsukaDecoder.from_pretrained(tmp_path / "asuka").eval()
    ours, theirs = adapted.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)  # weights: exact
    torch.testing.assert_close(loaded.decode(z, image=image, mask=mask).sample,  # outputs: float noise only
                               adapted.eval().decode(z, image=image, mask=mask).sample, rtol=0, atol=1e-4)


def test_configs_select_the_official_condition_path():
    for overrides in ([], ["experiment=demo"]):
        decoder_cfg = compose_config("train_decoder", overrides).model.decoder
        assert decoder_cfg.condition_mask_channel is True and decoder_cfg.fusion_mask == "area_any"
    with pytest.raises(ConfigError, match="model.decoder.fusion_mask"):
        build_decoder(OmegaConf.create({**ASUKA, "fusion_mask": "bilinear"}))


@torch.no_grad()
def test_without_the_options_the_forward_is_diffusers(vae):
    """mask_channel=False, fusion=nearest reproduces diffusers' MaskConditionDecoder bit for bit (same weights)."""
    theirs = build_decoder(OmegaConf.create(AVQ), vae).eval().decoder
    ours = AsukaMaskConditionDecoder(in_channels=4, out_channels=3, up_block_types=("UpDecoderBlock2D",) * 4,
                                     block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8,
                                     mask_channel=False, fusion="nearest").eval()
    ours.load_state_dict(theirs.state_dict())
    image, mask = _batch()
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours(z, image, mask), theirs(z, image, mask))
    assert torch.equal(ours(z), theirs(z))
