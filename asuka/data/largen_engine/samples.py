"""The scenes of the shipped quadruplets: procedural landscapes (``asuka.data.procedural``) with a few objects of
known flat colours (data/largen_scenes), which the engine's deterministic colour-key stand-in stages mine into
data/largen_samples (``scripts/make_largen_data.py experiment=demo``).

Regenerate the scenes with ``python -m asuka.data.largen_engine.samples --out data/largen_scenes``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from asuka.data.procedural import make_scene
from asuka.data.seeding import sample_rng

OBJECT_COLOURS = {"ball": (210, 40, 40), "box": (40, 80, 210), "kite": (235, 200, 40), "vase": (150, 60, 190)}


def _draw_object(draw: ImageDraw.ImageDraw, tag: str, x: float, y: float, s: float) -> None:
    """One object of half-size ``s`` centred at ``(x, y)`` in its key colour."""
    colour = OBJECT_COLOURS[tag]
    if tag == "ball":
        draw.ellipse((x - s, y - s, x + s, y + s), fill=colour)
    elif tag == "box":
        draw.rectangle((x - s, y - 0.7 * s, x + s, y + 0.7 * s), fill=colour)
    elif tag == "kite":
        draw.polygon([(x, y - s), (x + 0.6 * s, y), (x, y + s), (x - 0.6 * s, y)], fill=colour)
    else:  # vase: a body and a neck
        draw.ellipse((x - 0.6 * s, y - 0.3 * s, x + 0.6 * s, y + s), fill=colour)
        draw.rectangle((x - 0.25 * s, y - s, x + 0.25 * s, y), fill=colour)


def make_object_scene(seed: int, index: int, size: int = 128) -> Image.Image:
    """A procedural landscape with 1-2 separate objects (and sometimes a speck too small to keep)."""
    rng = sample_rng(seed, 0, index)
    scene = make_scene(seed * 1000 + index, size)
    draw = ImageDraw.Draw(scene)
    placed: list[tuple[float, float, float]] = []
    tags = list(OBJECT_COLOURS)
    for _ in range(int(rng.integers(1, 3))):
        tag = tags[int(rng.integers(len(tags)))]
        for _ in range(50):  # a spot clear of the objects already placed
            s = rng.uniform(0.08, 0.16) * size
            x, y = rng.uniform(s + 2, size - s - 2), rng.uniform(s + 2, size - s - 2)
            if all(np.hypot(x - px, y - py) > s + ps + 4 for px, py, ps in placed):
                placed.append((x, y, s))
                _draw_object(draw, tag, x, y, s)
                break
    if rng.random() < 0.5:
        x, y = rng.uniform(4, size - 4, 2)
        draw.rectangle((x - 1, y - 1, x + 1, y + 1), fill=OBJECT_COLOURS[tags[int(rng.integers(len(tags)))]])
    return scene


def standin_stages() -> dict[str, Any]:
    """The stage config of the colour-key stand-ins over ``OBJECT_COLOURS`` (= ``largen_stages=colour_key``)."""
    colours = {t: list(c) for t, c in OBJECT_COLOURS.items()}
    return {"tagger": {"kind": "colour_key", "colours": colours},
            "detector": {"kind": "colour_key", "colours": colours},
            "segmenter": {"kind": "border_contrast"}, "captioner": {"kind": "template"}}


def write_sample_scenes(out: str | os.PathLike, n: int = 4, seed: int = 0, size: int = 128) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"scene_{i:02d}.png" for i in range(n)]
    for i, path in enumerate(paths):
        make_object_scene(seed, i, size).save(path, format="PNG")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/largen_scenes")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    for path in write_sample_scenes(args.out, args.n, args.seed, args.size):
        print(path)


if __name__ == "__main__":
    main()
