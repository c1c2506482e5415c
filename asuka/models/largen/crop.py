"""The square scene crop around the mask that LAR-Gen trains and samples on (released inference: 1.3x the mask box)."""
from __future__ import annotations

import numpy as np

SCENE_CROP_SCALE = 1.3  # released LAR-Gen inference: the mask's box enlarged 1.3x, made square

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the True pixels of a bool ``HxW`` mask, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def square_crop_box(box: Box, scale: float, width: int, height: int) -> Box:
    """A square of side ``scale x`` the box's longer side (at most the image's shorter side), centred on the box and
    shifted to lie inside the ``width x height`` image."""
    x0, y0, x1, y1 = box
    side = int(round(max(x1 - x0, y1 - y0) * scale))
    side = max(1, min(side, width, height))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(cx - side / 2))
    top = int(round(cy - side / 2))
    left = min(max(left, 0), width - side)
    top = min(max(top, 0), height - side)
    return left, top, left + side, top + side
