"""Irregular masks (Co-Mod-GAN and LaMa styles) and rectangle masks, drawn with OpenCV at full resolution.

Each generator is a callable ``gen(rng, height, width) -> np.ndarray[bool]`` (True = hole) that takes every random
number from ``rng``. The stroke statistics follow the published generators (spec 1.3); sizes are given at a
reference resolution and scaled by ``sqrt(height * width) / reference_size``. Drawing goes through OpenCV (LaMa's own
drawing library): a whole thick polyline is one C call, where PIL needed a line call plus one disc call per vertex
and filled each wide segment about 1.4x slower.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

# Every OpenCV call here draws, counts or resizes one small mask, where its thread pool (a thread per core by
# default, in every DataLoader worker) only adds CPU time: ~70% more for an object resize on 2 cores.
cv2.setNumThreads(1)

INK = 1  # the value drawn into a uint8 canvas, so ``canvas.view(bool)`` is the mask


def canvas(height: int, width: int) -> np.ndarray:
    """A zeroed uint8 image to draw ``INK`` into; ``canvas(...).view(bool)`` is the mask, with no conversion copy."""
    return np.zeros((height, width), dtype=np.uint8)


def count_holes(mask: np.ndarray) -> int:
    """``np.count_nonzero`` of a bool mask, through OpenCV's counter (half the time at 512 px)."""
    return cv2.countNonZero(mask.view(np.uint8))


def fill_box(arr: np.ndarray, x: int, y: int, box_w: int, box_h: int) -> None:
    """Ink the box with top-left (``x``, ``y``) and that size, clipped to the image (the corner may be negative)."""
    arr[max(y, 0):max(y + box_h, 0), max(x, 0):max(x + box_w, 0)] = INK


def thick_polyline(arr: np.ndarray, points: np.ndarray, width: int) -> None:
    """Segments through ``points`` (int32, N x 2, x then y) ``width`` px wide with a disc of that diameter at every
    vertex: OpenCV's thick polyline has round caps and joins, the shape Co-Mod draws as a PIL line plus one ellipse
    per vertex and LaMa as one ``cv2.line`` per segment."""
    cv2.polylines(arr, [points], False, INK, int(width), cv2.LINE_8)


SUBPIXEL_BITS = 4  # polygon vertices are placed to 1/16 px


def fill_polygon(arr: np.ndarray, points: np.ndarray, scale: tuple[float, float] = (1.0, 1.0),
                 offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Ink the polygon through ``points * scale + offset`` (N x 2, x then y, in pixels) and its inside."""
    sub = float(1 << SUBPIXEL_BITS)
    vertices = points * (scale[0] * sub, scale[1] * sub)
    vertices += (offset[0] * sub, offset[1] * sub)
    cv2.fillPoly(arr, [np.rint(vertices, out=vertices).astype(np.int32)], INK, cv2.LINE_8, SUBPIXEL_BITS)


class CoModIrregular:
    """Co-Mod-GAN's ``RandomMask``: random boxes (MultiFill) plus ``RandomBrush`` strokes, then random flips.

    ``coef = min(lo + hi, 1)`` of the hole range scales the number of tries, as in the original. Stroke widths
    are U(min_width, max_width) at ``reference_size`` (Co-Mod-GAN's 512) and scale with the image. A stroke is a
    polyline of that width with a disc at every vertex (Co-Mod's ``line`` + ``ellipse`` per vertex). The flips are
    drawn first and applied to the coordinates (mirrored boxes, mirrored brush starts and steps), so the mask comes
    out contiguous: a left-right flipped view costs ~10x more in every later numpy operation.
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

    @staticmethod
    def _boxes(arr: np.ndarray, rng: np.random.Generator, tries: int, max_h: int, max_w: int,
               flip: tuple[bool, bool]) -> None:
        """Co-Mod's MultiFill: up to ``tries - 1`` boxes, each U[0, max) wide and high, that may stick out of the
        image by half their size (zero-sized boxes draw nothing). All boxes' numbers come from one array draw."""
        n = int(rng.integers(tries)) if tries > 0 else 0
        if n == 0:
            return
        height, width = arr.shape
        max_w, max_h = max(max_w, 1), max(max_h, 1)
        for uw, uh, ux, uy in rng.random((n, 4)).tolist():  # integers as floor(u * range): U{low, ..., high - 1}
            bw, bh = int(uw * max_w), int(uh * max_h)
            if bw == 0 or bh == 0:
                continue
            x = int(ux * (width - bw + 2 * (bw // 2))) - bw // 2  # U{-(bw // 2), ..., width - bw + bw // 2 - 1}
            y = int(uy * (height - bh + 2 * (bh // 2))) - bh // 2
            if flip[0]:
                x = width - x - bw
            if flip[1]:
                y = height - y - bh
            fill_box(arr, x, y, bw, bh)

    def _brush(self, arr: np.ndarray, rng: np.random.Generator, flip: tuple[bool, bool]) -> None:
        """Co-Mod's RandomBrush: zig-zag strokes whose turning angle alternates around ``mean_angle`` (the first
        step of a stroke turns by ``2 pi - angle``), each step clipped to the image before the next. The random
        numbers of all strokes come from a few array draws (the same distributions as one stroke at a time)."""
        n = int(rng.integers(self.brush_tries)) if self.brush_tries > 0 else 0
        if n == 0:
            return
        height, width = arr.shape
        avg_r = math.sqrt(height * height + width * width) / 8.0
        scale = math.sqrt(height * width) / self.reference_size
        # per stroke: angle spread below / above the mean, start x, start y, width, vertex count (integers as
        # floor(u * range): numpy's sized integers() costs ~10x more on a fresh per-sample generator)
        u = rng.random((6, n))
        counts = self.min_vertices + (u[5] * (self.max_vertices - self.min_vertices)).astype(np.int64)
        steps = int(counts.sum())
        first = np.repeat(np.cumsum(counts) - counts, counts)  # per step: the index of its stroke's first step
        low = np.repeat(self.mean_angle - self.angle_range * u[0], counts)
        angles = low + np.repeat(self.angle_range * (u[0] + u[1]), counts) * rng.random(steps)
        radii = np.minimum(np.maximum(rng.normal(avg_r, avg_r // 2, steps), 0.0), 2 * avg_r)
        # a stroke's 1st, 3rd, ... step turns by 2 pi - angle: its sine flips sign
        odd = (np.arange(steps) - first) & 1
        dx, dy = radii * np.cos(angles), radii * np.sin(angles) * (2 * odd - 1)
        xs, ys = (u[2] * width).astype(np.int64), (u[3] * height).astype(np.int64)
        if flip[0]:  # mirrored start, mirrored steps (the walk stays clipped to [0, width])
            xs, dx = width - 1 - xs, -dx
        if flip[1]:
            ys, dy = height - 1 - ys, -dy
        dx, dy = dx.tolist(), dy.tolist()
        widths = (self.min_width + (self.max_width - self.min_width) * u[4]) * scale
        widths = np.maximum(1, widths.astype(np.int64)).tolist()
        # the clipped walks of all strokes in one flat x, y list (a stroke's start, then its vertices)
        fw, fh, at, walk, bounds = float(width), float(height), 0, [], []
        for x, y, count in zip(xs.tolist(), ys.tolist(), counts.tolist()):
            bounds.append(len(walk) // 2)
            walk += (x, y)
            x, y = float(x), float(y)
            for step_x, step_y in zip(dx[at:at + count], dy[at:at + count]):
                x += step_x
                if x < 0.0:
                    x = 0.0
                elif x > fw:
                    x = fw
                y += step_y
                if y < 0.0:
                    y = 0.0
                elif y > fh:
                    y = fh
                walk += (x, y)
            at += count
        bounds.append(len(walk) // 2)
        points = np.array(walk).astype(np.int32).reshape(-1, 2)  # truncated to pixels
        for start, end, w in zip(bounds, bounds[1:], widths):
            thick_polyline(arr, points[start:end], w)

    def draw(self, arr: np.ndarray, rng: np.random.Generator) -> None:
        """Ink one mask into the uint8 canvas ``arr`` (on top of what it holds)."""
        height, width = arr.shape
        flip = tuple((rng.random(2) < 0.5).tolist())  # left-right, up-down
        self._boxes(arr, rng, self.small_box_tries, height // 2, width // 2, flip)
        self._boxes(arr, rng, self.large_box_tries, height, width, flip)
        self._brush(arr, rng, flip)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        arr = canvas(height, width)
        self.draw(arr, rng)
        return arr.view(bool)


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

    def _strokes(self, arr: np.ndarray, rng: np.random.Generator, scale: float) -> None:
        """1-N strokes of 1-5 straight segments; each segment has its own angle, length and width and round ends.
        The numbers of all segments come from two array draws."""
        p = self.stroke
        height, width = arr.shape
        times = int(rng.integers(int(p["min_times"]), int(p["max_times"]) + 1))
        # integers as floor(u * range), as in CoModIrregular._brush
        starts = (rng.random((times, 3)) * (width, height, 5)).astype(np.int64)  # x, y, segments - 1
        ranges = (int(p["max_angle"]), int(p["max_len"]), int(p["max_width"]))
        steps = (rng.random((int(starts[:, 2].sum()) + times, 3)) * ranges).astype(np.int64).tolist()
        at = 0
        for i, (x, y, extra) in enumerate(starts.tolist()):
            for angle, length, brush in steps[at:at + extra + 1]:
                angle = 0.01 + angle
                if i % 2 == 0:
                    angle = 2 * math.pi - angle
                length = (10 + length) * scale
                ex = int(min(max(x + length * math.sin(angle), 0), width))
                ey = int(min(max(y + length * math.cos(angle), 0), height))
                cv2.line(arr, (x, y), (ex, ey), INK, max(1, int(round((5 + brush) * scale))), cv2.LINE_8)
                x, y = ex, ey
            at += extra + 1

    def _boxes(self, arr: np.ndarray, rng: np.random.Generator, scale: float) -> None:
        """1-N boxes inside a margin; sizes and corners of all boxes come from one array draw."""
        p = self.box
        height, width = arr.shape
        margin = int(round(p["margin"] * scale))
        min_size = max(1, int(round(p["bbox_min_size"] * scale)))
        max_size = min(int(round(p["bbox_max_size"] * scale)), height - 2 * margin, width - 2 * margin)
        max_size = max(max_size, min_size + 1)
        times = int(rng.integers(int(p["min_times"]), int(p["max_times"]) + 1))
        for uw, uh, ux, uy in rng.random((times, 4)).tolist():  # integers as floor(u * range)
            bw, bh = min_size + int(uw * (max_size - min_size)), min_size + int(uh * (max_size - min_size))
            x = margin + int(ux * (max(margin, width - margin - bw) + 1 - margin))
            y = margin + int(uy * (max(margin, height - margin - bh) + 1 - margin))
            fill_box(arr, x, y, bw, bh)

    def draw(self, arr: np.ndarray, rng: np.random.Generator) -> None:
        """Ink one mask into the uint8 canvas ``arr`` (on top of what it holds)."""
        scale = math.sqrt(arr.size) / self.reference_size
        if rng.random() < self.stroke_share:
            self._strokes(arr, rng, scale)
        else:
            self._boxes(arr, rng, scale)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        arr = canvas(height, width)
        self.draw(arr, rng)
        return arr.view(bool)


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
