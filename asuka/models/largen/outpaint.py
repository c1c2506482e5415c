"""The canvas and hole of LAR-Gen's text-guided outpainting as released (scepter ``largen_ui.py``,
``data_preprocess_outpaint``): no zoom-in crop; the image is scaled to ``ratio`` of the output size (aspect kept,
sizes floored), put on a black canvas of the output size at the place its direction names, and the hole is
everything but the image shrunk by 5 px on every side, so the generated border overlaps the image's edge."""
from __future__ import annotations

import cv2
import numpy as np

from asuka.utils.errors import AsukaError, ConfigError

OUTPAINT_RATIO = 0.75  # released UI "Image Resize Ratio" slider default (range 0.5-1.0)
OUTPAINT_OVERLAP = 5   # released: pixels of the image's edge inside the hole, on every side
# released UI names (the first is the default): where the image sits, the canvas grows the other way
OUTPAINT_DIRECTIONS = ("CenterAround", "RightDown", "LeftDown", "RightUp", "LeftUp")


def check_outpaint(ratio: float, direction: str, keys: tuple[str, str] = ("ratio", "direction")) -> None:
    """One-line :class:`ConfigError` (naming ``keys``) for a ratio outside (0, 1] or an unknown direction."""
    if not 0 < ratio <= 1:
        raise ConfigError(keys[0], f"{ratio}: expected 0 < ratio <= 1 (released slider 0.5-1.0)")
    if direction not in OUTPAINT_DIRECTIONS:
        raise ConfigError(keys[1], f"{direction!r}: expected one of {', '.join(OUTPAINT_DIRECTIONS)}")


def outpaint_canvas(image: np.ndarray, height: int, width: int, ratio: float = OUTPAINT_RATIO,
                    direction: str = OUTPAINT_DIRECTIONS[0]) -> tuple[np.ndarray, np.ndarray]:
    """``(canvas uint8 [height, width, 3], hole bool [height, width])`` for an RGB uint8 ``image`` ``[h, w, 3]``.
    The scale, the floors and the placement are the release's; the resize is its ``cv2.resize`` (bilinear)."""
    check_outpaint(ratio, direction)
    h, w = image.shape[:2]
    scale = max(h / (height * ratio), w / (width * ratio))
    ih, iw = int(h / scale), int(w / scale)
    if min(ih, iw) <= 2 * OUTPAINT_OVERLAP:
        raise AsukaError(f"the {w}x{h} image scaled to {iw}x{ih} leaves no known pixels inside the "
                         f"{OUTPAINT_OVERLAP} px overlap: use a larger ratio or a less elongated image")
    top, left = {"CenterAround": ((height - ih) // 2, (width - iw) // 2), "RightDown": (0, 0),
                 "LeftDown": (0, width - iw), "RightUp": (height - ih, 0),
                 "LeftUp": (height - ih, width - iw)}[direction]
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[top : top + ih, left : left + iw] = cv2.resize(np.ascontiguousarray(image, dtype=np.uint8), (iw, ih))
    hole = np.ones((height, width), dtype=bool)
    o = OUTPAINT_OVERLAP
    hole[top + o : top + ih - o, left + o : left + iw - o] = False
    return canvas, hole
