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

import numpy as np
from PIL import Image, ImageDraw

from asuka.data.images import list_images, load_mask
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

    def render(self, height: int, width: int) -> np.ndarray:
        """The silhouette as a bool array of exactly ``height`` x ``width``."""
        if self.outline is not None:
            img = Image.new("L", (width, height), 0)
            pts = self.outline * np.array([width - 1, height - 1], dtype=np.float64)
            ImageDraw.Draw(img).polygon([tuple(p) for p in pts.tolist()], fill=255)
            return np.asarray(img) > 0
        if self.mask.shape == (height, width):
            return self.mask
        img = Image.fromarray(self.mask.astype(np.uint8) * 255, mode="L")
        if height * width > 4 * self.mask.size:  # enlarged more than 2x: bilinear + threshold keeps edges smooth
            return np.asarray(img.resize((width, height), Image.BILINEAR)) >= 128
        return np.asarray(img.resize((width, height), Image.NEAREST)) > 0


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


class SyntheticObjectShapes:
    """SYNTHETIC stand-in for real object silhouettes: smooth random blobs and random star polygons.

    Used only when neither a COCO instances file nor an object mask folder is configured (tests, the demo, the
    shipped samples). Real training should point ``paths.coco_instances`` or ``paths.object_masks`` at real data.
    """

    def __init__(self, size_range: tuple[float, float] = (0.15, 0.6), blob_prob: float = 0.6) -> None:
        self.size_range = (float(size_range[0]), float(size_range[1]))
        self.blob_prob = float(blob_prob)

    def _outline(self, rng: np.random.Generator) -> np.ndarray:
        """Unit-radius outline points: a radial Fourier blob or a star polygon with 3-8 vertices."""
        if rng.random() < self.blob_prob:
            theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
            k = np.arange(1, 5)[:, None]
            amp = rng.uniform(0, 0.3, (4, 1)) / k
            radius = 1 + (amp * np.cos(k * theta + rng.uniform(0, 2 * math.pi, (4, 1)))).sum(0)
        else:
            n = int(rng.integers(3, 9))
            theta = np.sort(rng.uniform(0, 2 * math.pi, n))
            radius = rng.uniform(0.45, 1.0, n)
        return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)

    def sample(self, rng: np.random.Generator) -> ObjectShape:
        pts = self._outline(rng)
        pts = (pts - pts.min(0)) / np.maximum(np.ptp(pts, axis=0), 1e-6)
        size = rng.uniform(*self.size_range)
        aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))  # width / height
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

    def _placed(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, int, int]:
        """One silhouette resized to its random scale (shrunk uniformly if larger than the image), maybe flipped,
        with a random top-left corner that keeps it inside the image."""
        shape = self.source.sample(rng)
        scale = rng.uniform(*self.scale_range)
        th, tw = shape.rel_height * scale * height, shape.rel_width * scale * width
        fit = min(1.0, height / th, width / tw)
        th, tw = max(1, int(round(th * fit))), max(1, int(round(tw * fit)))
        obj = shape.render(th, tw)
        if rng.random() < self.flip_prob:
            obj = obj[:, ::-1]
        return obj, int(rng.integers(0, height - th + 1)), int(rng.integers(0, width - tw + 1))

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        total, count = height * width, 0
        lo, hi = self.hole_range[0] * total, self.hole_range[1] * total
        for _ in range(self.max_objects):
            obj, y, x = self._placed(rng, height, width)
            region = mask[y:y + obj.shape[0], x:x + obj.shape[1]]
            added = int(np.count_nonzero(obj & ~region))
            if count + added > hi:
                continue
            region |= obj
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
