"""``model.mae.preprocess=official``: the released ASUKA loader (cv2 INTER_AREA image, nearest mask, soft mask kept,
hole pixels zeroed, all-hole -> zero prior), each rule against a hand computation; ``ours`` stays the default."""
from __future__ import annotations

import logging

import pytest
import torch

from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_import import load_mae
from asuka.models.mae_preprocess import cv2_area_resize

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32, decoder_depth=4,
            decoder_num_heads=2, mlp_ratio=2.0, prior_layer=3)


@pytest.fixture(scope="module")
def official() -> MaskedAutoencoderViT:
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**TINY, preprocess="official").eval()


def test_area_resize_2x_rounds_half_up() -> None:
    """cv2's 2x2 fast path: (sum + 2) >> 2."""
    img = torch.tensor([[0, 1, 5, 6], [0, 1, 5, 6], [10, 11, 255, 255], [12, 12, 254, 255]], dtype=torch.float32)
    out = cv2_area_resize(img[None, None], 2)[0, 0]
    # block sums 2 -> 0.5 -> 1, 22 -> 5.5 -> 6, 45 -> 11.25 -> 11, 1019 -> 254.75 -> 255
    assert out.tolist() == [[1.0, 6.0], [11.0, 255.0]]


def test_area_resize_4x_rounds_half_to_even() -> None:
    """Other integer factors: sum * (1 / area) in float, rounded half to even (cvRound)."""
    img = torch.zeros(1, 1, 4, 8)
    img[..., :, :4] = torch.tensor([2.0, 0, 0, 0]).repeat(4, 1)  # sum 8 -> 0.5 -> 0
    img[..., :, 4:] = torch.tensor([6.0, 0, 0, 0]).repeat(4, 1)  # sum 24 -> 1.5 -> 2
    assert cv2_area_resize(img, 1).shape == (1, 1, 1, 1)
    img = torch.cat([img, img], dim=-2)  # 8 x 8 -> 2 x 2, 4x4 blocks
    out = cv2_area_resize(img, 2)[0, 0]
    assert out.tolist() == [[0.0, 2.0], [0.0, 2.0]]


def test_area_resize_fractional_weights() -> None:
    """3 -> 2 pixels: out0 = (x0 + x1 / 2) / 1.5, out1 = (x1 / 2 + x2) / 1.5 on both axes, rounded."""
    row = torch.tensor([30.0, 90.0, 210.0])
    img = row[None, :] * torch.tensor([1.0, 0.5, 0.0])[:, None]  # rows scaled 1, 0.5, 0
    axis = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]]) / 1.5
    expected = torch.round(axis @ img @ axis.T)
    assert torch.equal(cv2_area_resize(img[None, None], 2)[0, 0], expected)


def test_area_resize_2x_zoom_repeats_pixels() -> None:
    """Growing, cv2 INTER_AREA's two-tap weights are (1, 0) at every output pixel of an exact 2x zoom."""
    img = torch.tensor([[10.0, 200.0], [37.0, 90.0]])
    expected = img.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)
    assert torch.equal(cv2_area_resize(img[None, None], 4)[0, 0], expected)


def test_official_inputs_hand_computed(official) -> None:
    """64 px inputs: image by 2x2 means on the 8-bit grid, mask by nearest (pixel 2i), soft values kept."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (1, 3, 64, 64), generator=g).float()
    image = pixels / 127.5 - 1.0
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 1, 1] = 1.0        # odd pixel: nearest drops it
    mask[..., 20:28, 0:16] = 0.4  # soft, < 0.5: known pixels, yet their patches are hole tokens
    mask[..., 40:64, 40:64] = 1.0
    img_s, x_in, pix_mask, token_mask = official._prepare(image, mask)
    blocks = pixels.reshape(1, 3, 32, 2, 32, 2).sum((3, 5))
    torch.testing.assert_close(img_s, torch.floor((blocks + 2) / 4) / 127.5 - 1.0, rtol=0, atol=1e-6)
    assert torch.equal(pix_mask, mask[..., ::2, ::2])
    assert pix_mask[..., 0, 0] == 0 and pix_mask[..., 10, 0] == pytest.approx(0.4)
    known = (pix_mask < 0.5).float()
    torch.testing.assert_close(x_in, official.normalize(img_s) * known)
    assert (x_in[..., 10:14, 0:8] != 0).all()  # mask 0.4 is known
    expected_tokens = (torch.nn.functional.avg_pool2d(pix_mask, 8) > 0).float().flatten(1)
    assert torch.equal(token_mask, expected_tokens) and token_mask[0, 4] == 1  # patch (1, 0): the 0.4 rows


def test_ours_is_unchanged_and_the_default() -> None:
    """``ours``: the mask binarised at 0.5 and any-hole downsampling (the 0.4 band is known, the odd pixel a hole)."""
    torch.manual_seed(0)
    ours = MaskedAutoencoderViT(**TINY).eval()
    assert ours.config.preprocess == "ours"
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 1, 1] = 1.0
    mask[..., 20:28, 0:16] = 0.4
    _, _, pix_mask, _ = ours._prepare(torch.zeros(1, 3, 64, 64), mask)
    assert pix_mask[..., 0, 0] == 1 and pix_mask[..., 10, 0] == 0


def test_all_hole_gives_a_zero_prior_with_a_warning(official, caplog) -> None:
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0] = 1
    mask[1, :, :8] = 1
    with caplog.at_level(logging.WARNING), torch.no_grad():
        prior = official.prior(image, mask)
    assert "all hole" in caplog.text and "[0]" in caplog.text
    assert torch.equal(prior[0], torch.zeros_like(prior[0])) and prior[1].abs().sum() > 0


def test_released_file_defaults_to_official_and_config_overrides(tmp_path) -> None:
    torch.manual_seed(0)
    state = MaskedAutoencoderViT(**TINY).state_dict()  # the MAE-FAR layout (alpha, decoder_patch_embed)
    torch.save({"model": state}, tmp_path / "mae_300.pth")
    assert load_mae(tmp_path / "mae_300.pth", TINY).config.preprocess == "official"
    assert load_mae(tmp_path / "mae_300.pth", {**TINY, "preprocess": None}).config.preprocess == "official"
    ours = load_mae(tmp_path / "mae_300.pth", {**TINY, "preprocess": "ours"})
    assert ours.config.preprocess == "ours"
    ours.save_pretrained(tmp_path / "folder")
    assert load_mae(tmp_path / "folder", TINY).config.preprocess == "ours"  # a folder keeps its own
    assert load_mae(tmp_path / "folder", {**TINY, "preprocess": "official"}).config.preprocess == "official"
