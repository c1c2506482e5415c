"""The paper's mixed mask generator: object shapes (half unioned with an irregular mask), irregular masks
(Co-Mod-GAN or LaMa style) and rectangle / complement-rectangle masks, with the hole ratio kept in a range."""
from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Mapping

import numpy as np

from asuka.data.masks.objects import ObjectMaskGenerator, ObjectShapeSource, build_object_source
from asuka.data.masks.strokes import (
    CoModIrregular,
    ComplementRectangleMask,
    LamaIrregular,
    RectangleMask,
    canvas,
    count_holes,
)
from asuka.utils.errors import ConfigError

KINDS = ("object", "object+irregular", "irregular", "rectangle", "complement_rectangle")
DEFAULT_PROBS = {"object": 0.5, "irregular": 0.4, "regular": 0.1}
# Bumped whenever the same seed stops giving byte-identical masks (recorded in mask manifests and banks).
# 2: Co-Mod strokes draw their random numbers per mask, flips are views, all drawing in ink 1 on a shared canvas.
# 3: every part draws its random numbers in array calls and through PIL's C drawer; Co-Mod flips mirror the
#    coordinates; object outlines are rasterised straight into the mask (flip = mirrored outline).
# 4: drawing through OpenCV (thick polylines with round joins, filled polygons, boxes by slicing); the irregular
#    part of object+irregular is drawn onto the objects' canvas; object placement numbers from one array draw;
#    arrays of integers drawn as floor(u * range) instead of through numpy's sized integers().
GENERATOR_VERSION = 4


def _component(cls: Callable[..., Any], key: str, kwargs: Mapping[str, Any] | None, **fixed: Any) -> Any:
    """Build one component from its config section; a wrong key or value becomes a ConfigError naming the section."""
    try:
        return cls(**{**dict(kwargs or {}), **fixed})
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, str(exc)) from None


def clip_hole_ratio(mask: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """Last resort when resampling never hit [lo, hi]: union a random box of area ``lo`` (ratio too low) or clear a
    random box of area ``1 - hi`` (too high). That guarantees the bound on the violated side and keeps the other
    side whenever ``hi >= 2 lo`` and ``lo <= 2 hi - 1`` (true for both shipped presets)."""
    h, w = mask.shape
    total = h * w
    ratio = np.count_nonzero(mask) / total
    if lo <= ratio <= hi:
        return mask
    mask = mask.copy()
    need, fill = (lo, True) if ratio < lo else (1.0 - hi, False)
    pixels = math.ceil(need * total)
    bw = min(w, max(1, math.ceil(math.sqrt(pixels))))
    bh = min(h, math.ceil(pixels / bw))
    y0, x0 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    mask[y0:y0 + bh, x0:x0 + bw] = fill
    return mask


class MixedMaskGenerator:
    """``gen(rng, height, width) -> (mask, kind)``: mask is bool HxW (True = hole), kind one of ``KINDS``.

    The kind is drawn first from the re-normalised ``probs`` (object / irregular / regular), split by
    ``object_union_prob`` and ``complement_prob``; then masks of that kind are drawn until the hole ratio lies in
    ``hole_range`` (inclusive), at most ``max_tries`` times. Should every try miss, the last one is clipped into the
    range with ``clip_hole_ratio`` (counted in ``self.clipped``; rare with the shipped presets). All randomness comes
    from ``rng``, so a fixed generator state gives a fixed mask.
    """

    def __init__(
        self,
        probs: Mapping[str, float] | None = None,
        object_union_prob: float = 0.5,
        irregular_comod_prob: float = 0.5,
        complement_prob: float = 0.5,
        hole_range: tuple[float, float] = (0.05, 0.75),
        max_tries: int = 50,
        comod: Mapping[str, Any] | None = None,
        lama: Mapping[str, Any] | None = None,
        objects: Mapping[str, Any] | None = None,
        rectangle: Mapping[str, Any] | None = None,
        object_source: ObjectShapeSource | None = None,
    ) -> None:
        probs = dict(DEFAULT_PROBS if probs is None else probs)
        unknown = set(probs) - set(DEFAULT_PROBS)
        if unknown:
            raise ConfigError("mask.probs", f"unknown kinds {sorted(unknown)}; expected {sorted(DEFAULT_PROBS)}")
        p = {k: float(probs.get(k, 0.0)) for k in DEFAULT_PROBS}
        if min(p.values()) < 0 or sum(p.values()) <= 0:
            raise ConfigError("mask.probs", f"need non-negative probabilities with a positive sum, got {p}")
        for key, value in (("object_union_prob", object_union_prob), ("irregular_comod_prob", irregular_comod_prob),
                           ("complement_prob", complement_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"mask.{key}", f"must be in [0, 1], got {value}")
        lo, hi = (float(v) for v in hole_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError("mask.hole_range", f"need 0 <= lo < hi <= 1, got {list(hole_range)}")
        if int(max_tries) < 1:
            raise ConfigError("mask.max_tries", f"must be >= 1, got {max_tries}")
        self.hole_range, self.max_tries = (lo, hi), int(max_tries)
        self.irregular_comod_prob = float(irregular_comod_prob)

        u, c = float(object_union_prob), float(complement_prob)
        weights = [p["object"] * (1 - u), p["object"] * u, p["irregular"], p["regular"] * (1 - c), p["regular"] * c]
        self.kind_probs = {k: w / sum(weights) for k, w in zip(KINDS, weights)}
        self._cum = np.cumsum([self.kind_probs[k] for k in KINDS]).tolist()

        self._comod = _component(CoModIrregular, "mask.comod", comod, hole_range=(lo, hi))
        self._lama = _component(LamaIrregular, "mask.lama", lama)
        rect_kwargs = {"ratio_range": (lo, hi), **dict(rectangle or {})}
        self._rectangle = _component(RectangleMask, "mask.rectangle", rect_kwargs)
        self._complement = _component(ComplementRectangleMask, "mask.rectangle", rect_kwargs)
        self._objects = None
        if p["object"] > 0:
            source = object_source if object_source is not None else build_object_source()
            self._objects = _component(ObjectMaskGenerator, "mask.objects", objects, source=source,
                                       hole_range=(lo, hi))
        self.clipped = 0

    def _irregular(self, rng: np.random.Generator, arr: np.ndarray) -> None:
        """Ink a Co-Mod or LaMa mask into the uint8 canvas ``arr``."""
        (self._comod if rng.random() < self.irregular_comod_prob else self._lama).draw(arr, rng)

    def _draw(self, kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        if kind == "object":
            return self._objects(rng, height, width)
        if kind == "object+irregular":  # the union: the irregular mask is drawn onto the objects' canvas
            mask = self._objects(rng, height, width)
            self._irregular(rng, mask.view(np.uint8))
            return mask
        if kind == "irregular":
            arr = canvas(height, width)
            self._irregular(rng, arr)
            return arr.view(bool)
        if kind == "rectangle":
            return self._rectangle(rng, height, width)
        return self._complement(rng, height, width)

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
        kind = KINDS[min(bisect.bisect_right(self._cum, rng.random()), len(KINDS) - 1)]
        while self.kind_probs[kind] == 0.0:  # float round-off at the top of the cumulative sum
            kind = KINDS[KINDS.index(kind) - 1]
        lo, hi = self.hole_range
        total = height * width
        for _ in range(self.max_tries):
            mask = self._draw(kind, rng, height, width)
            if lo <= count_holes(mask) / total <= hi:
                break
        else:
            self.clipped += 1
            mask = clip_hole_ratio(mask, rng, lo, hi)
        return mask, kind
