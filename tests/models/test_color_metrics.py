"""Boundary colour error (asuka.data.color): Lab conversion against skimage, the band, known values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import deltaE_cie76, rgb2lab

from asuka.data.color import (
    boundary_band,
    boundary_color_error,
    delta_e76,
    error_map_to_image,
    rgb_to_lab,
    ring_error_map,
)


def _to_numpy01(image: torch.Tensor) -> np.ndarray:
    return ((image[0].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)


def test_rgb_to_lab_matches_skimage():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = rgb_to_lab(image)[0].permute(1, 2, 0).numpy()
    # skimage rounds the sRGB -> XYZ matrix to 6 digits: differences stay below 0.01 Delta E
    np.testing.assert_allclose(ours, rgb2lab(_to_numpy01(image)), atol=1e-2)


def _square_mask(size: int = 32) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., 10:20, 8:24] = 1
    return mask


def test_band_is_both_sides_of_the_boundary():
    mask = _square_mask()
    band = boundary_band(mask, band=2)
    # hole 10x16 dilated by 2 -> 14x20, eroded by 2 -> 6x12
    assert band.sum() == 14 * 20 - 6 * 12
    assert band[0, 0, 8, 6] == 1 and band[0, 0, 11, 9] == 1  # outside corner, inside edge
    assert band[0, 0, 15, 16] == 0 and band[0, 0, 0, 0] == 0  # hole centre, far away
    assert boundary_band(torch.ones(1, 1, 8, 8), 2).sum() == 0  # all hole: no boundary


def test_zero_for_identical_images():
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = _square_mask().repeat(2, 1, 1, 1)
    err = boundary_color_error(image, image.clone(), mask)
    assert err.shape == (2,) and torch.all(err == 0)


def test_known_value_for_a_constant_colour_shift():
    """A constant colour target and a shifted one: the band mean is the single Delta E computed by skimage."""
    target = torch.tensor([0.2, -0.1, -0.5]).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    pred = (target + torch.tensor([0.1, 0.05, -0.08]).view(1, 3, 1, 1)).contiguous()
    expected = deltaE_cie76(rgb2lab(_to_numpy01(target)[:1, :1]), rgb2lab(_to_numpy01(pred)[:1, :1]))[0, 0]
    err = boundary_color_error(pred, target, _square_mask(), band=3)
    assert err.item() == pytest.approx(expected, abs=1e-2)
    assert expected > 5  # a visible shift, so the check is not trivially near zero


def test_only_the_band_counts_and_empty_band_is_nan():
    target = torch.zeros(1, 3, 32, 32)
    pred = target.clone()
    mask = _square_mask()
    pred[..., 14:16, 14:18] = 0.5  # deep inside the hole, outside a 2-pixel band
    pred[..., 0:2, 0:2] = 0.5  # far outside
    assert boundary_color_error(pred, target, mask, band=2).item() == 0
    pred[..., 10, 8] = 0.5  # the hole's corner pixel is in the band
    assert boundary_color_error(pred, target, mask, band=2).item() > 0
    assert torch.isnan(boundary_color_error(pred, target, torch.zeros(1, 1, 32, 32))).all()


def test_ring_error_map_is_the_known_ring_only():
    target = torch.zeros(1, 3, 32, 32)
    pred = torch.full_like(target, 0.3)
    mask = _square_mask()
    ring = ring_error_map(pred, target, mask, band=2)
    assert ring.shape == (1, 1, 32, 32)
    assert (ring[mask.bool()] == 0).all()  # not inside the hole
    assert ring[0, 0, 9, 12] > 0 and ring[0, 0, 0, 0] == 0
    expected = delta_e76(pred, target)[0, 0, 0, 0]
    assert torch.allclose(ring[ring > 0], expected)
    picture = error_map_to_image(ring)
    assert picture.shape == (1, 3, 32, 32) and picture.min() >= -1 and picture.max() <= 1
