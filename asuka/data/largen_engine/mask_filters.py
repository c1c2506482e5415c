"""Mask quality filters after the segmenter, and the instance box taken from the kept mask."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np
from scipy import ndimage


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The tight ``(x0, y0, x1, y1)`` box of a non-empty bool mask (x1/y1 exclusive)."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def main_component_fraction(mask: np.ndarray) -> float:
    """Share of the mask's pixels in its largest 8-connected component (1.0 = one piece)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max()) / float(mask.sum())


def mask_rejection(mask: np.ndarray, score: float, box: tuple[float, float, float, float],
                   cfg: Mapping[str, Any]) -> str | None:
    """The first filter the mask fails, or None when it passes. ``cfg``: ``min_score`` (the segmenter's quality);
    ``min_area`` (mask pixels / image pixels); ``min_fill`` (mask pixels inside the detector box / box area: the mask
    explains the box); ``min_inside`` (share of the mask inside the box: it does not leak); ``min_main_component``
    (share in the largest connected piece: not fragmented)."""
    if score < cfg["min_score"]:
        return "score"
    area = int(mask.sum())
    if area == 0 or area / mask.size < cfg["min_area"]:
        return "area"
    h, w = mask.shape
    x0, y0 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x1, y1 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    inside = int(mask[y0:y1, x0:x1].sum())
    if inside / max(1, (x1 - x0) * (y1 - y0)) < cfg["min_fill"]:
        return "fill"
    if inside / area < cfg["min_inside"]:
        return "inside"
    if main_component_fraction(mask) < cfg["min_main_component"]:
        return "components"
    return None


MASK_FILTERS = ("score", "area", "fill", "inside", "components")


def count_mask_filters(rejections: list[str | None], counts: Counter) -> None:
    """``counts["masks_<filter>"]`` += how many masks passed that filter and every one before it."""
    counts["masks_segmented"] += len(rejections)
    for i, name in enumerate(MASK_FILTERS):
        counts[f"masks_{name}"] += sum(r is None or MASK_FILTERS.index(r) > i for r in rejections)
