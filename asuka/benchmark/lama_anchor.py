"""The speed anchor of the masks task: a LaMa-style irregular + box generator written the way LaMa's training code
draws its masks (a zeroed canvas per mask, thick strokes with round ends, boxes by slicing), so "masks per second"
of our paper mix can be read against it in the same run.

It is not part of the data pipeline and not a port of LaMa's file: it follows the published algorithm
(``abl-04-256-mh-dist``: strokes or 1-4 boxes, 50/50) with the sizes scaled by ``size / 256`` as our
``LamaIrregular`` does, drawing its strokes with OpenCV's ``cv2.line`` into a float32 canvas as LaMa does.
"""
from __future__ import annotations

import math

import cv2
import numpy as np


class LamaStyleAnchor:
    """``anchor(rng) -> float32 [1, size, size]`` (1 = hole), LaMa's irregular or box mask with equal odds."""

    def __init__(self, size: int) -> None:
        s = size / 256.0
        self.size = size
        self.max_len, self.max_width = int(200 * s), int(100 * s)
        self.margin, self.box_min, self.box_max = int(10 * s), int(30 * s), int(150 * s)

    def _irregular(self, rng: np.random.Generator, mask: np.ndarray) -> None:
        n = self.size
        for i in range(int(rng.integers(1, 6))):
            x, y = int(rng.integers(n)), int(rng.integers(n))
            for _ in range(1 + int(rng.integers(5))):
                angle = 0.01 + int(rng.integers(4))
                if i % 2 == 0:
                    angle = 2 * math.pi - angle
                length = 10 + int(rng.integers(self.max_len))
                width = 5 + int(rng.integers(self.max_width))
                ex = int(np.clip(x + length * math.sin(angle), 0, n))
                ey = int(np.clip(y + length * math.cos(angle), 0, n))
                cv2.line(mask, (x, y), (ex, ey), 1.0, width)
                x, y = ex, ey

    def _boxes(self, rng: np.random.Generator, mask: np.ndarray) -> None:
        n, m = self.size, self.margin
        top = min(self.box_max, n - 2 * m)
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = int(rng.integers(self.box_min, top)), int(rng.integers(self.box_min, top))
            x, y = int(rng.integers(m, n - m - bw + 1)), int(rng.integers(m, n - m - bh + 1))
            mask[y:y + bh, x:x + bw] = 1

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.size, self.size), np.float32)
        (self._irregular if rng.random() < 0.5 else self._boxes)(rng, mask)
        return mask[None]
