"""Object-shape masks: real object silhouettes (COCO instances or a folder of masks), or synthetic shapes, placed at a
random scale, position and flip (spec 7: scale 0.5-1.5, random placement, random flip)."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from asuka.data.images import list_images, load_mask
from asuka.data.masks.strokes import canvas, count_holes, fill_polygon
from asuka.utils.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectShape:
    """One silhouette, with its bounding box size relative to the image it came from, so it is placed at the same
    relative size (times the random scale) in any target resolution. Either a bool ``mask`` cropped to the box, or
    an ``outline`` (N x 2 polygon, x/y in [0, 1] of the box) that renders sharply and fast at any size."""

    rel_height: float
    rel_width: float
    mask: np.ndarray | None = None
    outline: np.ndarray | None = None

    def paint(self, mask: np.ndarray, top: int, left: int, height: int, width: int, flip: bool) -> None:
        """Union the silhouette, sized ``height`` x ``width`` and mirrored left-right when ``flip``, into ``mask``
        (a ``canvas`` viewed as bool) at (``top``, ``left``): an outline is filled straight into it, a bitmap is
        resized and OR-ed into the box."""
        if self.outline is not None:
            w1, h1 = width - 1, height - 1  # a flip mirrors x in the box: left + w1 * x -> left + w1 - w1 * x
            fill_polygon(mask.view(np.uint8), self.outline, (-w1 if flip else w1, h1), (left + w1 * flip, top))
            return
        obj = self._resized(height, width, flip)
        region = mask[top:top + height, left:left + width]
        np.bitwise_or(region, obj, out=region)

    def _resized(self, height: int, width: int, flip: bool) -> np.ndarray:
        """The bitmap as a bool array of exactly ``height`` x ``width``, mirrored left-right when ``flip``. Enlarged
        more than 2x it is interpolated bilinearly and rounded (smooth edges), else sampled at the nearest pixel
        centre (OpenCV: 3x faster than PIL with its uint8 conversions)."""
        src = self.mask.view(np.uint8)  # 0 / 1
        if src.shape != (height, width):
            enlarge = height * width > 4 * src.size
            src = cv2.resize(src, (width, height), interpolation=cv2.INTER_LINEAR if enlarge
                             else cv2.INTER_NEAREST_EXACT)
        return (cv2.flip(src, 1) if flip else src).view(bool)


class ObjectShapeSource(Protocol):
    def sample(self, rng: np.random.Generator) -> ObjectShape: ...


def crop_object(full: np.ndarray, min_area: float = 0.0) -> ObjectShape | None:
    """Crop a full-frame object mask to its bounding box; None when the object covers less than ``min_area``."""
    h, w = full.shape
    count = int(np.count_nonzero(full))
    if count == 0 or count < min_area * h * w:
        return None
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return ObjectShape((y1 - y0) / h, (x1 - x0) / w, mask=np.ascontiguousarray(full[y0:y1, x0:x1]))


class CocoObjectShapes:
    """Instance silhouettes from a COCO ``instances_*.json`` (pycocotools ``annToMask``).

    The JSON is parsed lazily, once per process (not pickled to DataLoader workers); for many workers on the large
    train2017 file a folder of pre-extracted masks (``FolderObjectShapes``) uses less memory.
    """

    def __init__(self, annotation_file: str | os.PathLike, min_area: float = 0.01, max_tries: int = 20) -> None:
        self.annotation_file = Path(annotation_file)
        if not self.annotation_file.is_file():
            raise DataError(f"{self.annotation_file}: COCO instances file not found (paths.coco_instances)")
        self.min_area, self.max_tries = float(min_area), int(max_tries)
        self._coco = None
        self._ann_ids: list[int] = []

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_coco": None, "_ann_ids": []}

    def _load(self) -> None:
        from pycocotools.coco import COCO

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(str(self.annotation_file))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.annotation_file}: not a COCO instances file ({exc})") from None
        ids = []
        for ann_id, ann in coco.anns.items():
            img = coco.imgs.get(ann.get("image_id"))
            if img and not ann.get("iscrowd", 0) and ann.get("area", 0) >= self.min_area * img["height"] * img["width"]:
                ids.append(ann_id)
        if not ids:
            raise DataError(f"{self.annotation_file}: no non-crowd instance covers {self.min_area:.0%} of its image")
        self._coco, self._ann_ids = coco, sorted(ids)

    def _instance(self, ann: dict) -> ObjectShape | None:
        """The instance's silhouette. Polygons are rasterised by pycocotools inside their own bounding window only
        (decoding the whole image, as ``annToMask`` does, costs most of the time); RLE falls back to annToMask."""
        from pycocotools import mask as mask_utils

        img = self._coco.imgs[ann["image_id"]]
        polys = ann.get("segmentation")
        if not isinstance(polys, list) or not polys:
            return crop_object(self._coco.annToMask(ann).astype(bool))
        xs = np.concatenate([np.asarray(p[0::2], dtype=np.float64) for p in polys])
        ys = np.concatenate([np.asarray(p[1::2], dtype=np.float64) for p in polys])
        x0, y0 = max(int(np.floor(xs.min())), 0), max(int(np.floor(ys.min())), 0)
        w = min(int(np.ceil(xs.max())) + 1, img["width"]) - x0
        h = min(int(np.ceil(ys.max())) + 1, img["height"]) - y0
        if w <= 0 or h <= 0:
            return None
        shifted = [(np.asarray(p, dtype=np.float64) - np.tile([x0, y0], len(p) // 2)).tolist() for p in polys]
        window = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(shifted, h, w))).astype(bool)
        shape = crop_object(window)
        if shape is None:
            return None
        rows, cols = shape.mask.shape
        return ObjectShape(rows / img["height"], cols / img["width"], mask=shape.mask)

    def sample(self, rng: np.random.Generator) -> ObjectShape:
        if self._coco is None:
            self._load()
        for _ in range(self.max_tries):
            ann = self._coco.anns[self._ann_ids[int(rng.integers(len(self._ann_ids)))]]
            shape = self._instance(ann)
            if shape is not None:
                return shape
        raise DataError(f"{self.annotation_file}: {self.max_tries} sampled instances had empty masks")


@functools.lru_cache(maxsize=4096)
def _cached_object(path: str, min_area: float) -> ObjectShape | None:
    return crop_object(load_mask(path), min_area)


class FolderObjectShapes:
    """Binary object masks (PNG etc., >= 128 = object), one object per file, e.g. pre-extracted COCO segments."""

    def __init__(self, root: str | os.PathLike, min_area: float = 0.01, max_tries: int = 20) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: object mask folder not found (paths.object_masks)")
        self.files = [str(p) for p in list_images(self.root)]
        if not self.files:
            raise DataError(f"{self.root}: no mask images found; expected binary PNGs, 255 = object")
        self.min_area, self.max_tries = float(min_area), int(max_tries)

    def sample(self, rng: np.random.Generator) -> ObjectShape:
        for _ in range(self.max_tries):
            shape = _cached_object(self.files[int(rng.integers(len(self.files)))], self.min_area)
            if shape is not None:
                return shape
        raise DataError(f"{self.root}: {self.max_tries} sampled masks were empty or below min_area {self.min_area}")


_BLOB_THETA = np.linspace(0, 2 * math.pi, 48, endpoint=False)  # outline angles of a synthetic blob
_BLOB_DIRECTIONS = np.stack([np.cos(_BLOB_THETA), np.sin(_BLOB_THETA)], axis=1)  # unit vectors at those angles
# its radius is 1 + sum_h a_h cos(h theta + phi_h), h = 1..4, = 1 + [a cos phi, -a sin phi] @ this table
_BLOB_TABLE = np.concatenate([np.cos(np.outer(np.arange(1, 5), _BLOB_THETA)),
                              np.sin(np.outer(np.arange(1, 5), _BLOB_THETA))])


class SyntheticObjectShapes:
    """SYNTHETIC stand-in for real object silhouettes: smooth random blobs and random star polygons.

    Used only when neither a COCO instances file nor an object mask folder is configured (tests, the demo, the
    shipped samples). Real training should point ``paths.coco_instances`` or ``paths.object_masks`` at real data.
    """

    def __init__(self, size_range: tuple[float, float] = (0.15, 0.6), blob_prob: float = 0.6) -> None:
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.blob_prob = float(blob_prob)

    def _outline(self, rng: np.random.Generator, blob: bool) -> np.ndarray:
        """Unit-radius outline points: a radial Fourier blob (amplitudes U(0, 0.3) / h, phases U(0, 2 pi)) or a
        star polygon with 3-8 vertices at sorted U(0, 2 pi) angles and U(0.45, 1) radii."""
        if blob:
            u = rng.random(8).tolist()
            amp = [0.3 * u[h] / (h + 1) for h in range(4)]
            phase = [2 * math.pi * v for v in u[4:]]
            coef = [a * math.cos(p) for a, p in zip(amp, phase)] + [-a * math.sin(p) for a, p in zip(amp, phase)]
            radius = 1 + np.dot(coef, _BLOB_TABLE)
            return radius[:, None] * _BLOB_DIRECTIONS
        n = int(rng.integers(3, 9))
        theta = np.sort(rng.random(n)) * (2 * math.pi)
        radius = 0.45 + 0.55 * rng.random(n)
        return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)

    def sample(self, rng: np.random.Generator) -> ObjectShape:
        u_blob, u_size, u_aspect = rng.random(3).tolist()
        pts = self._outline(rng, u_blob < self.blob_prob)
        low, high = pts.min(0), pts.max(0)
        pts -= low
        pts /= np.maximum(high - low, 1e-6)
        size = self.size_range[0] + (self.size_range[1] - self.size_range[0]) * u_size
        aspect = 2.0 ** (2 * u_aspect - 1)  # width / height, log-uniform in [1/2, 2]
        rel_h, rel_w = min(size / math.sqrt(aspect), 1.0), min(size * math.sqrt(aspect), 1.0)
        return ObjectShape(rel_h, rel_w, outline=pts)


class ObjectMaskGenerator:
    """Places object silhouettes until the hole ratio reaches ``hole_range[0]``; an object that would push it past
    ``hole_range[1]`` is skipped. At most ``max_objects`` draws (our choice), so some masks may still miss the
    range; the mixed generator resamples those."""

    def __init__(self, source: ObjectShapeSource, hole_range: tuple[float, float] = (0.0, 1.0),
                 scale_range: tuple[float, float] = (0.5, 1.5), flip_prob: float = 0.5, max_objects: int = 10) -> None:
        self.source = source
        self.hole_range = (float(hole_range[0]), float(hole_range[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.flip_prob, self.max_objects = float(flip_prob), int(max_objects)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        mask = canvas(height, width).view(bool)
        count = 0
        lo, hi = self.hole_range[0] * height * width, self.hole_range[1] * height * width
        for _ in range(self.max_objects):
            # one silhouette at its random scale (shrunk uniformly if larger than the image), maybe flipped, at a
            # random top-left corner that keeps it inside the image
            shape = self.source.sample(rng)
            u_scale, u_flip, u_top, u_left = rng.random(4).tolist()  # integers as floor(u * range)
            scale = self.scale_range[0] + (self.scale_range[1] - self.scale_range[0]) * u_scale
            th, tw = shape.rel_height * scale * height, shape.rel_width * scale * width
            fit = min(1.0, height / th, width / tw)
            th, tw = max(1, int(round(th * fit))), max(1, int(round(tw * fit)))
            top, left = int(u_top * (height - th + 1)), int(u_left * (width - tw + 1))
            region = mask[top:top + th, left:left + tw]
            before = count_holes(region) if count else 0
            # a copy to undo the object only when it could push the count past hi
            undo = region.copy() if count - before + th * tw > hi else None
            shape.paint(mask, top, left, th, tw, u_flip < self.flip_prob)
            added = count_holes(region) - before
            if count + added > hi:
                region[...] = undo
                continue
            count += added
            if count >= lo:
                break
        return mask


def build_object_source(coco_instances: str | None = None, mask_dir: str | None = None,
                        min_area: float = 0.01) -> ObjectShapeSource:
    """The configured silhouette source; without one, the clearly labelled synthetic shapes (with a warning)."""
    if coco_instances and mask_dir:
        raise ConfigError("mask.object_source", "set coco_instances or mask_dir, not both")
    if coco_instances:
        return CocoObjectShapes(coco_instances, min_area=min_area)
    if mask_dir:
        return FolderObjectShapes(mask_dir, min_area=min_area)
    log.warning("no COCO instances file or object mask folder configured: object-shape masks use SYNTHETIC shapes "
                "(set paths.coco_instances or paths.object_masks for real object silhouettes)")
    return SyntheticObjectShapes()
