"""The square scene crop around the mask that LAR-Gen trains and samples on (released inference: 1.3x the mask box)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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


def released_crop_box(mask: np.ndarray, scale: float = SCENE_CROP_SCALE) -> Box:
    """The zoom-in crop of released LAR-Gen inference (scepter ``largen_ui.py``: ``get_bbox_from_mask``,
    ``expand_bbox``, ``box2squre``): the mask's box (the whole image when under 10 pixels are masked), ``scale`` x about
    its centre, clipped to the image, then squared on its longer side about its centre and clipped again; so near a
    border the crop is not square (:func:`pad_square` pads it)."""
    height, width = mask.shape
    if mask.sum() < 10:
        y0, y1, x0, x1 = 0, height, 0, width
    else:
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())  # inclusive ends, as released
    new_h, new_w = scale * (y1 - y0 + 1), scale * (x1 - x0 + 1)
    xc, yc = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    x0, x1 = max(0, int(xc - new_w * 0.5)), min(width, int(xc + new_w * 0.5))
    y0, y1 = max(0, int(yc - new_h * 0.5)), min(height, int(yc + new_h * 0.5))
    cx, cy, h, w = (x0 + x1) // 2, (y0 + y1) // 2, y1 - y0, x1 - x0
    if h >= w:
        x0 = cx - h // 2
        x1 = x0 + h
    else:
        y0 = cy - w // 2
        y1 = y0 + w
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def pad_square(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Released ``pad_to_square`` of a crop ``[B,C,h,w]``: the shorter side padded on both sides (half, rounded down,
    before) with black (-1 in [-1, 1]) pixels and an unmasked mask; returns the pads ``(before, after)``."""
    h, w = image.shape[-2:]
    before = abs(h - w) // 2
    after = abs(h - w) - before
    pad = (before, after, 0, 0) if h > w else (0, 0, before, after)
    return F.pad(image, pad, value=-1.0), F.pad(mask, pad, value=0.0), (before, after)


def crop_back(result: torch.Tensor, crop_hw: tuple[int, int], pads: tuple[int, int]) -> tuple[torch.Tensor, Box]:
    """Released ``crop_back``: the square ``result`` resized (antialiased bilinear) to the padded crop's side, the
    padding cut off together with 2 more pixels on each padded side; returns the patch and where it goes in the
    crop ``(x0, y0, x1, y1)``."""
    h, w = crop_hw
    side = max(h, w)
    result = F.interpolate(result, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    before, after = pads
    if w < h:
        return result[..., :, before + 2 : side - after - 2], (2, 0, w - 2, h)
    if h < w:
        return result[..., before + 2 : side - after - 2, :], (0, 2, w, h - 2)
    return result, (0, 0, w, h)
