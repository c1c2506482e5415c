"""Canvases for outpainting and masks painted in a browser: the hole is the new border (plus an overlap band into
the original, so the seam is regenerated, as the official ASUKA demo does), or whatever was painted."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image

from asuka.utils.errors import DataError


def zoom_out_borders(size: tuple[int, int], zoom: float) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) borders that make a (width, height) image ``zoom`` times larger on every side."""
    if zoom < 1:
        raise DataError(f"zoom {zoom}: expected >= 1")
    w, h = size
    dx, dy = round(w * (zoom - 1) / 2), round(h * (zoom - 1) / 2)
    return dx, dx, dy, dy


def extend_canvas(image: PIL.Image.Image, left: int, right: int, top: int, bottom: int,
                  overlap: int = 0) -> tuple[PIL.Image.Image, np.ndarray]:
    """The image on a larger canvas (the border repeats the edge pixels) and the hole: the border, plus ``overlap``
    pixels into the image on every side that grew."""
    borders = (left, right, top, bottom)
    if min(borders) < 0 or overlap < 0:
        raise DataError("outpainting borders and overlap must be >= 0")
    if not any(borders):
        raise DataError("outpainting needs at least one side to extend")
    pixels = np.asarray(image.convert("RGB"))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    hole = np.ones(canvas.shape[:2], dtype=bool)
    h, w = pixels.shape[:2]
    y0, y1 = top + (overlap if top else 0), top + h - (overlap if bottom else 0)
    x0, x1 = left + (overlap if left else 0), left + w - (overlap if right else 0)
    if y1 <= y0 or x1 <= x0:
        raise DataError(f"overlap {overlap} px leaves nothing of the {w}x{h} image")
    hole[y0:y1, x0:x1] = False
    return PIL.Image.fromarray(canvas), hole


def painted_mask(layers: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The hole painted on an image editor's layers (RGBA arrays): every pixel any stroke covered."""
    hole = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[:2] != hole.shape:
            raise DataError(f"a painted layer of shape {layer.shape} does not match the {size[0]}x{size[1]} image")
        hole |= (layer[..., 3] > 0) if layer.shape[2] == 4 else layer.max(axis=2) > 0
    return hole
