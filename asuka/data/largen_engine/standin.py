"""Deterministic stand-in stages for the shipped samples and the demo: objects of known flat colours on procedural
scenes (``samples.py``). Real image processing, no model: a colour-key tagger and detector, a segmenter that
separates a box's content from its border colour, and a template captioner."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from asuka.data.largen_engine.stages import Detection

_NAMED_COLOURS = {"red": (210, 40, 40), "blue": (40, 80, 210), "yellow": (235, 200, 40), "purple": (150, 60, 190),
                  "white": (240, 240, 240), "black": (20, 20, 20), "green": (60, 150, 60), "orange": (240, 140, 30)}


def _key_pixels(image: Image.Image, colour: Sequence[int], tolerance: int) -> np.ndarray:
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return np.abs(rgb - np.asarray(colour, dtype=np.int16)).max(axis=-1) <= tolerance


class ColourKeyTagger:
    """Tags whose key colour covers at least ``min_fraction`` of the image; score = coverage / (2 min_fraction),
    capped at 1."""

    def __init__(self, colours: Mapping[str, Sequence[int]], tolerance: int = 24, min_fraction: float = 0.002):
        self.colours, self.tolerance, self.min_fraction = dict(colours), tolerance, min_fraction

    def __call__(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        out = []
        for img in images:
            found = []
            for tag, colour in self.colours.items():
                fraction = float(_key_pixels(img, colour, self.tolerance).mean())
                if fraction >= self.min_fraction:
                    found.append((tag, min(1.0, fraction / (2 * self.min_fraction))))
            out.append(found)
        return out


class ColourKeyDetector:
    """One box per 8-connected blob of a tag's key colour; score = the blob's share of its box."""

    def __init__(self, colours: Mapping[str, Sequence[int]], tolerance: int = 24):
        self.colours, self.tolerance = dict(colours), tolerance

    def __call__(self, images: list[Image.Image], tags: list[list[str]]) -> list[list[Detection]]:
        out = []
        for img, names in zip(images, tags):
            found = []
            for tag in names:
                labels, _ = ndimage.label(_key_pixels(img, self.colours[tag], self.tolerance), np.ones((3, 3), bool))
                for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                    fill = float((labels[sl] == k).mean())
                    found.append(Detection(tag, (float(sl[1].start), float(sl[0].start), float(sl[1].stop),
                                                 float(sl[0].stop)), fill))
            out.append(found)
        return out


class BorderContrastSegmenter:
    """Inside each box (grown by one pixel), the pixels farther than ``threshold`` (RGB distance) from every colour
    on the box's border: the border is the background's colour model. Score = share of the border that is
    background."""

    def __init__(self, threshold: float = 40.0):
        self.threshold = threshold

    def __call__(self, images: list[Image.Image], boxes: list[list[tuple[float, float, float, float]]]
                 ) -> list[list[tuple[np.ndarray, float]]]:
        out = []
        for img, img_boxes in zip(images, boxes):
            rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
            h, w = rgb.shape[:2]
            found = []
            for box in img_boxes:
                x0, y0 = max(0, int(box[0]) - 1), max(0, int(box[1]) - 1)
                x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
                crop = rgb[y0:y1, x0:x1]
                border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
                dist = np.linalg.norm(crop.reshape(-1, 1, 3) - border[None], axis=-1).min(axis=1)
                far = dist.reshape(crop.shape[:2]) > self.threshold
                mask = np.zeros((h, w), dtype=bool)
                mask[y0:y1, x0:x1] = far
                edge = np.concatenate([far[0], far[-1], far[:, 0], far[:, -1]])
                found.append((mask, 1.0 - float(edge.mean())))
            out.append(found)
        return out


class TemplateCaptioner:
    """``"a <colour> <tag>"`` with the named colour nearest to the subject's mean non-white colour."""

    def __call__(self, subjects: list[Image.Image], tags: list[str]) -> list[str]:
        names, palette = zip(*_NAMED_COLOURS.items())
        captions = []
        for subject, tag in zip(subjects, tags):
            rgb = np.asarray(subject.convert("RGB"), dtype=np.float32).reshape(-1, 3)
            fg = rgb[(rgb < 250).any(axis=1)]
            mean = fg.mean(axis=0) if len(fg) else np.full(3, 255.0)
            nearest = int(np.argmin(np.linalg.norm(np.asarray(palette, np.float32) - mean, axis=1)))
            captions.append(f"a {names[nearest]} {tag}")
        return captions
