"""What a stage of the data engine takes and gives, and the factory that builds the configured ones."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
from PIL import Image

from asuka.utils.errors import ConfigError


@dataclass(frozen=True)
class Detection:
    """A box ``(x0, y0, x1, y1)`` in scene pixels (floats, x1/y1 exclusive) for ``tag`` with the detector's score."""

    tag: str
    box: tuple[float, float, float, float]
    score: float

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class Tagger(Protocol):
    def __call__(self, images: list[Image.Image]) -> list[list[tuple[str, float]]]:
        """Per image, ``(tag, score)`` for the tags it shows."""


class Detector(Protocol):
    def __call__(self, images: list[Image.Image], tags: list[list[str]]) -> list[list[Detection]]:
        """Per image, the boxes of the given tags."""


class Segmenter(Protocol):
    def __call__(self, images: list[Image.Image], boxes: list[list[tuple[float, float, float, float]]]
                 ) -> list[list[tuple[np.ndarray, float]]]:
        """Per image and box, ``(mask: bool HxW of the scene, quality score)``."""


class Captioner(Protocol):
    def __call__(self, subjects: list[Image.Image], tags: list[str]) -> list[str]:
        """One short local description per subject cut-out (white background), given its tag."""


@dataclass
class Stages:
    tagger: Tagger
    detector: Detector
    segmenter: Segmenter
    captioner: Captioner


_HERE = "asuka.data.largen_engine"
BUILT_IN = {
    "tagger": {"colour_key": f"{_HERE}.standin:ColourKeyTagger", "clip": f"{_HERE}.tagger:ClipTagger"},
    "detector": {"colour_key": f"{_HERE}.standin:ColourKeyDetector",
                 "grounding_dino": f"{_HERE}.detector:GroundingDinoDetector"},
    "segmenter": {"border_contrast": f"{_HERE}.standin:BorderContrastSegmenter",
                  "sam": f"{_HERE}.segmenter:SamSegmenter"},
    "captioner": {"template": f"{_HERE}.standin:TemplateCaptioner", "llava": f"{_HERE}.captioner:LlavaCaptioner"},
}


def build_stages(stages_cfg: Mapping[str, Any], device: str = "cpu") -> Stages:
    """The configured stages: each ``kind`` is a built-in name (the transformers models, ``model``: a hub id or a
    local folder; or the samples' stand-ins) or ``package.module:Class`` (your own stage, built with the other keys)."""
    import inspect

    built = {}
    for name, kinds in BUILT_IN.items():
        cfg = dict(stages_cfg[name])
        kind = cfg.pop("kind", None)
        target = kind if isinstance(kind, str) and ":" in kind else kinds.get(kind)
        if target is None:
            raise ConfigError(f"stages.{name}.kind", f"'{kind}' is not one of {sorted(kinds)} nor package.module:Class")
        maker = _import(f"stages.{name}.kind", target)
        if "device" in inspect.signature(maker).parameters:
            cfg["device"] = device
        built[name] = maker(**cfg)
    return Stages(**built)


def _import(key: str, target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(key, f"cannot import '{target}' ({exc})") from None
