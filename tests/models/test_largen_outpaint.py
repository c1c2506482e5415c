"""The released LAR-Gen outpainting canvas and hole (scepter ``largen_ui.py``), against sizes, placements and
overlap bands computed here by hand."""
from __future__ import annotations

import numpy as np
import pytest

from asuka.models.largen.outpaint import check_outpaint, outpaint_canvas
from asuka.utils.errors import AsukaError, ConfigError

COLOUR = (200, 40, 90)


def flat(h: int, w: int) -> np.ndarray:
    """A one-colour image: any resize keeps its colour, so placement is checked without re-deriving the resize."""
    return np.broadcast_to(np.array(COLOUR, np.uint8), (h, w, 3)).copy()


# 33x25 (w x h) on 64x64 at ratio 0.5: scale max(25/32, 33/32) = 33/32 -> 24.24 floored to 24 rows, 32 columns
@pytest.mark.parametrize("direction, top, left", [
    ("CenterAround", 20, 16), ("RightDown", 0, 0), ("LeftDown", 0, 32), ("RightUp", 40, 0), ("LeftUp", 40, 32)])
def test_scaled_image_placement_and_the_5px_overlap(direction: str, top: int, left: int) -> None:
    canvas, hole = outpaint_canvas(flat(25, 33), 64, 64, 0.5, direction)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8 and hole.shape == (64, 64)
    inside = np.zeros((64, 64), bool)
    inside[top : top + 24, left : left + 32] = True
    assert (canvas[inside] == COLOUR).all()
    assert not canvas[~inside].any()  # black canvas
    known = np.zeros((64, 64), bool)
    known[top + 5 : top + 19, left + 5 : left + 27] = True  # the image minus 5 px on every side
    np.testing.assert_array_equal(hole, ~known)


def test_non_square_canvas_and_upscaling() -> None:
    """16x16 on a 48x64 canvas at ratio 1: scale max(16/48, 16/64) = 1/3 -> 48x48, centred at column 8."""
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    canvas, hole = outpaint_canvas(image, 48, 64, 1.0)
    assert canvas.shape == (48, 64, 3)
    assert not canvas[:, :8].any() and not canvas[:, 56:].any() and canvas[:, 8:56].any()
    assert hole.sum() == 48 * 64 - 38 * 38
    assert not hole[5:43, 13:51].any()
    # bilinear 3x upscale: the centre of each 3x3 block is the source pixel exactly
    np.testing.assert_array_equal(canvas[1:48:3, 9:56:3], image)


def test_bad_outpainting_values_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="config key 'outpaint'"):
        check_outpaint(0.75, "Up", ("largen.outpaint_ratio", "outpaint"))
    with pytest.raises(ConfigError, match="config key 'ratio'"):
        check_outpaint(1.5, "CenterAround")
    with pytest.raises(AsukaError, match="leaves no known pixels"):
        outpaint_canvas(flat(10, 200), 64, 64, 0.5)  # scaled to 32x1
