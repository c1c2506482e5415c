"""Grad: the gradient error along the hole boundary of the released ASUKA-FLUX evaluation (``eval/cal_grad.py``).

Per image and colour channel: Sobel gradients (3x3, reflect-101 border) of the composite minus those of the ground
truth, their magnitude ``sqrt(dx^2 + dy^2)`` averaged over the Canny edges of the mask (0 when the mask has no edge).
The score is the mean over images and channels. The official script takes the edges with OpenCV's
``Canny(mask, 100, 200)``; on a binary 0/255 mask every non-zero Sobel response is at least 255 > 200, so those edges
are exactly OpenCV's non-maximum-suppression survivors, which :func:`mask_edges` computes with OpenCV's rules
(replicated border, L1 magnitude, 22.5-degree sectors, its tie-breaking).

Soft masks: ours binarises the mask first (composite and edges of ``mask >= 0.5``);
:func:`official_boundary_gradient_error` is the released script on a grey mask as it is: the composite
``pred * m/255 + gt * (1 - m/255)`` (unrounded floats) and OpenCV's ``Canny`` (with its hysteresis) on the grey
mask, which on a blurred mask finds other edges than on the binarised one (33.77 official vs 132.49 ours on one).
"""
from __future__ import annotations

import numpy as np

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
_TG22 = int(0.4142135623730950488 * (1 << 15) + 0.5)  # OpenCV's tan(22.5 deg) in Q15


def _correlate3(image: np.ndarray, kernel: np.ndarray, border: str) -> np.ndarray:
    """3x3 correlation of an ``HxW`` array; ``border`` is numpy's pad mode (``reflect`` = OpenCV's REFLECT_101)."""
    p = np.pad(image, 1, mode=border)
    h, w = image.shape
    out = np.zeros((h, w), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            if kernel[dy, dx]:
                out += kernel[dy, dx] * p[dy:dy + h, dx:dx + w]
    return out


def sobel(image: np.ndarray, border: str = "reflect") -> tuple[np.ndarray, np.ndarray]:
    """``(d/dx, d/dy)`` of an ``HxW`` image with OpenCV's 3x3 Sobel kernels, float64."""
    image = np.asarray(image, dtype=np.float64)
    return _correlate3(image, _SOBEL_X, border), _correlate3(image, _SOBEL_X.T, border)


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """``HxW`` bool: the edges OpenCV's ``Canny(mask_u8, 100, 200)`` finds on a binary mask (True/255 = hole)."""
    m = np.where(np.asarray(mask) > 0, 255.0, 0.0)
    gx, gy = sobel(m, border="edge")
    gx, gy = gx.astype(np.int64), gy.astype(np.int64)
    mag = np.abs(gx) + np.abs(gy)
    p = np.pad(mag, 1)  # neighbours outside the image have magnitude 0
    h, w = m.shape

    def at(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    x, y = np.abs(gx), np.abs(gy) << 15
    tg22x = x * _TG22
    horizontal = y < tg22x
    vertical = ~horizontal & (y > tg22x + (x << 16))
    diagonal = ~horizontal & ~vertical
    s = np.where((gx ^ gy) < 0, -1, 1)
    diag_ok = np.where(s < 0, (mag > at(-1, 1)) & (mag > at(1, -1)), (mag > at(-1, -1)) & (mag > at(1, 1)))
    keep = (horizontal & (mag > at(0, -1)) & (mag >= at(0, 1))) | (vertical & (mag > at(-1, 0)) & (mag >= at(1, 0)))
    keep |= diagonal & diag_ok
    return keep & (mag > 100)


def boundary_gradient_error(result: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel Grad of one image: ``result``/``gt`` ``HxWxC`` (0..255), ``mask`` ``HxW`` (hole > 0). -> ``[C]``."""
    edges = mask_edges(mask)
    if not edges.any():
        return np.zeros(result.shape[-1])
    out = []
    for c in range(result.shape[-1]):
        rx, ry = sobel(result[..., c])
        gx, gy = sobel(gt[..., c])
        out.append(float(np.sqrt((rx - gx) ** 2 + (ry - gy) ** 2)[edges].mean()))
    return np.array(out)


def official_boundary_gradient_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel Grad of one image exactly as ``eval/cal_grad.py``: ``pred``/``gt`` ``HxWx3`` uint8, ``mask``
    ``HxW`` uint8 grey (255 = hole). -> ``[3]``."""
    import cv2

    m = mask.astype(np.float64)[..., None] / 255.0
    result = pred * m + gt * (1 - m)
    edges = cv2.Canny(np.ascontiguousarray(mask, dtype=np.uint8), 100, 200) > 0
    if not edges.any():
        return np.zeros(result.shape[-1])
    out = []
    for c in range(result.shape[-1]):
        rx, ry = (cv2.Sobel(result[..., c], cv2.CV_64F, *d, ksize=3) for d in ((1, 0), (0, 1)))
        gx, gy = (cv2.Sobel(np.ascontiguousarray(gt[..., c]), cv2.CV_64F, *d, ksize=3) for d in ((1, 0), (0, 1)))
        out.append(float(np.sqrt((rx - gx) ** 2 + (ry - gy) ** 2)[edges].mean()))
    return np.array(out)
