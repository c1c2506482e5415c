"""Irregular masks (Co-Mod-GAN and LaMa styles) and rectangle masks, drawn with PIL at full resolution.

Each generator is a callable ``gen(rng, height, width) -> np.ndarray[bool]`` (True = hole) that takes every random
number from ``rng``. The stroke statistics follow the published generators (spec 1.3); sizes are given at a
reference resolution and scaled by ``sqrt(height * width) / reference_size``.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw


def _canvas(height: int, width: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (width, height), 0)
    return img, ImageDraw.Draw(img)


def _as_bool(img: Image.Image) -> np.ndarray:
    return np.asarray(img) > 0


def draw_stroke(draw: ImageDraw.ImageDraw, points: list[tuple[int, int]], width: int) -> None:
    """A polyline of the given width with round caps and joints (a disc at every vertex), like a brush."""
    draw.line(points, fill=255, width=width)
    r = width / 2.0
    for x, y in points:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)


class CoModIrregular:
    """Co-Mod-GAN's ``RandomMask``: random boxes (MultiFill) plus ``RandomBrush`` strokes, then random flips.

    ``coef = min(lo + hi, 1)`` of the hole range scales the number of tries, as in the original. Stroke widths
    are U(min_width, max_width) at ``reference_size`` (Co-Mod-GAN's 512) and scale with the image.
    """

    def __init__(
        self,
        hole_range: tuple[float, float] = (0.0, 1.0),
        small_box_tries: int = 10,
        large_box_tries: int = 5,
        brush_tries: int = 20,
        min_vertices: int = 4,
        max_vertices: int = 18,
        mean_angle: float = 2 * math.pi / 5,
        angle_range: float = 2 * math.pi / 15,
        min_width: float = 12,
        max_width: float = 48,
        reference_size: int = 512,
    ) -> None:
        coef = min(float(hole_range[0]) + float(hole_range[1]), 1.0)
        self.small_box_tries = int(small_box_tries * coef)
        self.large_box_tries = int(large_box_tries * coef)
        self.brush_tries = int(brush_tries * coef)
        self.min_vertices, self.max_vertices = int(min_vertices), int(max_vertices)
        self.mean_angle, self.angle_range = float(mean_angle), float(angle_range)
        self.min_width, self.max_width = float(min_width), float(max_width)
        self.reference_size = float(reference_size)

    def _boxes(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, tries: int, max_h: int, max_w: int,
               height: int, width: int) -> None:
        """Co-Mod's MultiFill: up to ``tries - 1`` boxes that may stick out of the image by half their size."""
        n = int(rng.integers(tries)) if tries > 0 else 0
        for _ in range(n):
            bw, bh = int(rng.integers(max(max_w, 1))), int(rng.integers(max(max_h, 1)))
            x = int(rng.integers(-(bw // 2), width - bw + bw // 2))
            y = int(rng.integers(-(bh // 2), height - bh + bh // 2))
            if bw > 0 and bh > 0:
                draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=255)

    def _brush(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int) -> None:
        """Co-Mod's RandomBrush: zig-zag strokes whose turning angle alternates around ``mean_angle``."""
        n = int(rng.integers(self.brush_tries)) if self.brush_tries > 0 else 0
        avg_r = math.sqrt(height * height + width * width) / 8.0
        scale = math.sqrt(height * width) / self.reference_size
        for _ in range(n):
            nv = int(rng.integers(self.min_vertices, self.max_vertices))
            lo = self.mean_angle - rng.uniform(0, self.angle_range)
            hi = self.mean_angle + rng.uniform(0, self.angle_range)
            angles = rng.uniform(lo, hi, nv)
            angles[::2] = 2 * math.pi - angles[::2]
            x, y = float(rng.integers(width)), float(rng.integers(height))
            radii = np.clip(rng.normal(avg_r, avg_r // 2, nv), 0, 2 * avg_r)
            dx, dy = (radii * np.cos(angles)).tolist(), (radii * np.sin(angles)).tolist()
            points = [(int(x), int(y))]
            for ddx, ddy in zip(dx, dy):
                x = min(max(x + ddx, 0.0), float(width))
                y = min(max(y + ddy, 0.0), float(height))
                points.append((int(x), int(y)))
            stroke_w = max(1, int(rng.uniform(self.min_width, self.max_width) * scale))
            draw_stroke(draw, points, stroke_w)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        img, draw = _canvas(height, width)
        self._boxes(draw, rng, self.small_box_tries, height // 2, width // 2, height, width)
        self._boxes(draw, rng, self.large_box_tries, height, width, height, width)
        self._brush(draw, rng, height, width)
        mask = _as_bool(img)
        if rng.random() < 0.5:
            mask = mask[::-1]
        if rng.random() < 0.5:
            mask = mask[:, ::-1]
        return np.ascontiguousarray(mask)


class LamaIrregular:
    """LaMa's mixed training masks: with re-normalised probabilities either thick strokes or 1-N boxes.

    Defaults are LaMa's ``abl-04-256-mh-dist`` values (spec 1.3), given at 256 px and scaled with the image.
    """

    def __init__(
        self,
        stroke_prob: float = 1.0,
        stroke: dict | None = None,
        box_prob: float = 1.0,
        box: dict | None = None,
        reference_size: int = 256,
    ) -> None:
        total = float(stroke_prob) + float(box_prob)
        if stroke_prob < 0 or box_prob < 0 or total <= 0:
            raise ValueError(f"stroke_prob/box_prob must be >= 0 with a positive sum, got {stroke_prob}, {box_prob}")
        self.stroke_share = float(stroke_prob) / total
        self.stroke = {"max_angle": 4, "max_len": 200, "max_width": 100, "min_times": 1, "max_times": 5}
        self.stroke.update(stroke or {})
        self.box = {"margin": 10, "bbox_min_size": 30, "bbox_max_size": 150, "min_times": 1, "max_times": 4}
        self.box.update(box or {})
        self.reference_size = float(reference_size)

    def _strokes(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int,
                 scale: float) -> None:
        p = self.stroke
        times = int(rng.integers(int(p["min_times"]), int(p["max_times"]) + 1))
        for i in range(times):
            x, y = int(rng.integers(width)), int(rng.integers(height))
            for _ in range(1 + int(rng.integers(5))):
                angle = 0.01 + int(rng.integers(int(p["max_angle"])))
                if i % 2 == 0:
                    angle = 2 * math.pi - angle
                length = (10 + int(rng.integers(int(p["max_len"])))) * scale
                brush_w = max(1, int(round((5 + int(rng.integers(int(p["max_width"])))) * scale)))
                ex = int(min(max(x + length * math.sin(angle), 0), width))
                ey = int(min(max(y + length * math.cos(angle), 0), height))
                draw_stroke(draw, [(x, y), (ex, ey)], brush_w)
                x, y = ex, ey

    def _boxes(self, draw: ImageDraw.ImageDraw, rng: np.random.Generator, height: int, width: int,
               scale: float) -> None:
        p = self.box
        margin = int(round(p["margin"] * scale))
        min_size = max(1, int(round(p["bbox_min_size"] * scale)))
        max_size = min(int(round(p["bbox_max_size"] * scale)), height - 2 * margin, width - 2 * margin)
        max_size = max(max_size, min_size + 1)
        times = int(rng.integers(int(p["min_times"]), int(p["max_times"]) + 1))
        for _ in range(times):
            bw, bh = int(rng.integers(min_size, max_size)), int(rng.integers(min_size, max_size))
            x = int(rng.integers(margin, max(margin, width - margin - bw) + 1))
            y = int(rng.integers(margin, max(margin, height - margin - bh) + 1))
            draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=255)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        img, draw = _canvas(height, width)
        scale = math.sqrt(height * width) / self.reference_size
        if rng.random() < self.stroke_share:
            self._strokes(draw, rng, height, width, scale)
        else:
            self._boxes(draw, rng, height, width, scale)
        return _as_bool(img)


def _random_box(rng: np.random.Generator, height: int, width: int, area: float,
                aspect_range: tuple[float, float]) -> tuple[int, int, int, int]:
    """A box (y0, y1, x0, x1) covering about ``area`` of the image, random aspect and position."""
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))  # width / height
    pixels = area * height * width
    bw = int(round(math.sqrt(pixels * aspect)))
    bh = int(round(math.sqrt(pixels / aspect)))
    if bw > width:
        bw, bh = width, int(round(pixels / width))
    if bh > height:
        bh, bw = height, int(round(pixels / height))
    bw, bh = min(max(bw, 1), width), min(max(bh, 1), height)
    y0, x0 = int(rng.integers(0, height - bh + 1)), int(rng.integers(0, width - bw + 1))
    return y0, y0 + bh, x0, x0 + bw


class RectangleMask:
    """One random box is the hole; its area is drawn uniformly from ``ratio_range`` (our choice: the paper gives no
    box sizes), so it lands in the hole range without resampling."""

    def __init__(self, ratio_range: tuple[float, float] = (0.05, 0.75),
                 aspect_range: tuple[float, float] = (0.5, 2.0)) -> None:
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.aspect_range = (float(aspect_range[0]), float(aspect_range[1]))

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        area = rng.uniform(*self.ratio_range)
        y0, y1, x0, x1 = _random_box(rng, height, width, area, self.aspect_range)
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = True
        return mask


class ComplementRectangleMask(RectangleMask):
    """Outpainting: everything outside one random box is the hole (the hole ratio is drawn from ``ratio_range``)."""

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        area = 1.0 - rng.uniform(*self.ratio_range)
        y0, y1, x0, x1 = _random_box(rng, height, width, area, self.aspect_range)
        mask = np.ones((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = False
        return mask
