"""Procedural landscape scenes for the shipped samples in data/samples (the demo and the tests need real-looking
images with no download): sky gradient, sun, clouds, layered hills, textured ground, trees and a house.

Regenerate the samples and their eval-preset masks with ``python -m asuka.data.procedural --out data/samples``.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from asuka.data.mask_files import MaskGenerator, save_mask
from asuka.data.seeding import sample_rng

_SKIES = (  # (zenith, horizon) colours: day, sunset, dusk, overcast
    ((40, 90, 190), (170, 210, 240)),
    ((70, 60, 140), (250, 160, 90)),
    ((30, 30, 80), (200, 110, 140)),
    ((120, 130, 145), (200, 205, 210)),
)
_GREENS = ((60, 120, 50), (90, 140, 60), (110, 120, 70), (140, 130, 80), (70, 100, 80))


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: random grids of growing frequency, bicubically up-sampled and summed."""
    total = np.zeros((h, w), dtype=np.float32)
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = Image.fromarray((rng.random((cells + 1, cells + 1)) * 255).astype(np.uint8), mode="L")
        total += np.asarray(grid.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0 * 0.5 ** o
    return total / sum(0.5 ** o for o in range(octaves))


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    return a * (1 - t) + b * t


def _ridge(rng: np.random.Generator, w: int, base: float, amplitude: float) -> np.ndarray:
    """A hill outline y(x): a few random sinusoids around ``base`` (pixel rows)."""
    x = np.arange(w, dtype=np.float32) / w
    y = np.full(w, base, dtype=np.float32)
    for k in range(1, 5):
        y += amplitude / k * np.sin(2 * np.pi * (k * rng.uniform(0.5, 1.5) * x + rng.random()))
    return y


def make_scene(seed: int, size: int = 256) -> Image.Image:
    """One RGB landscape of ``size`` x ``size``, fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    h = w = size
    zenith, horizon = (np.array(c, dtype=np.float32) for c in _SKIES[int(rng.integers(len(_SKIES)))])
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None] ** 0.8
    img = np.broadcast_to(_mix(zenith, horizon, t), (h, w, 3)).copy()

    sun = Image.new("L", (w, h), 0)
    cx, cy, r = rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.35) * h, rng.uniform(0.04, 0.08) * w
    ImageDraw.Draw(sun).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    glow = np.asarray(sun.filter(ImageFilter.GaussianBlur(r)), dtype=np.float32)[..., None] / 255.0
    img = _mix(img, np.array([255, 240, 200], dtype=np.float32), np.clip(glow * 1.5, 0, 1))

    clouds = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(clouds)
    for _ in range(int(rng.integers(2, 7))):
        x, y = rng.uniform(0, w), rng.uniform(0.05, 0.4) * h
        for _ in range(int(rng.integers(3, 7))):
            dx, dy, rx, ry = rng.normal(0, 0.05 * w), rng.normal(0, 0.01 * h), rng.uniform(0.04, 0.1) * w, \
                rng.uniform(0.02, 0.04) * h
            draw.ellipse((x + dx - rx, y + dy - ry, x + dx + rx, y + dy + ry), fill=int(rng.integers(120, 230)))
    cloud = np.asarray(clouds.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)[..., None] / 255.0
    img = _mix(img, np.array([245, 245, 250], dtype=np.float32), cloud)

    rows = np.arange(h, dtype=np.float32)[:, None]
    n_layers = int(rng.integers(2, 4))
    for layer in range(n_layers):
        depth = (layer + 1) / n_layers  # 1 = nearest
        ridge = _ridge(rng, w, h * (0.45 + 0.3 * depth), h * (0.12 - 0.05 * depth))
        inside = (rows >= ridge[None, :])[..., None]
        green = np.array(_GREENS[int(rng.integers(len(_GREENS)))], dtype=np.float32)
        tex = _noise(rng, h, w)[..., None]
        colour = green * (0.7 + 0.5 * tex) * (0.75 + 0.25 * (1 - depth))
        colour = _mix(colour, horizon, 0.55 * (1 - depth))  # aerial perspective
        img = np.where(inside, colour, img)

    scene = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(2, 9))):  # trees on the front layer
        x, base = rng.uniform(0, w), rng.uniform(0.75, 0.95) * h
        th, tw = rng.uniform(0.08, 0.2) * h, rng.uniform(0.03, 0.07) * w
        draw.rectangle((x - tw * 0.12, base - th * 0.3, x + tw * 0.12, base), fill=(80, 55, 35))
        dark = tuple(int(c) for c in np.array(_GREENS[int(rng.integers(len(_GREENS)))]) * 0.6)
        draw.polygon([(x - tw, base - th * 0.25), (x + tw, base - th * 0.25), (x, base - th)], fill=dark)
    if rng.random() < 0.7:  # a house
        x, base, s = rng.uniform(0.2, 0.8) * w, rng.uniform(0.8, 0.92) * h, rng.uniform(0.08, 0.14) * w
        wall = tuple(int(c) for c in rng.integers(150, 240, 3))
        draw.rectangle((x - s, base - s, x + s, base), fill=wall)
        draw.polygon([(x - s * 1.2, base - s), (x + s * 1.2, base - s), (x, base - s * 1.9)], fill=(150, 50, 40))
        draw.rectangle((x - s * 0.6, base - s * 0.7, x - s * 0.2, base - s * 0.35), fill=(60, 80, 120))
        draw.rectangle((x + s * 0.15, base - s * 0.6, x + s * 0.55, base), fill=(90, 60, 40))
    return scene.filter(ImageFilter.SMOOTH)


def write_samples(out: str | os.PathLike, mask_generator: MaskGenerator, n: int = 8, seed: int = 0,
                  size: int = 256) -> list[Path]:
    """``out/scene_00.png``... and ``out/masks/scene_00.png``... (255 = hole); mask i from sample_rng(seed, 0, i)."""
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(n):
        name = f"scene_{i:02d}.png"
        make_scene(seed * 1000 + i, size).save(out / name, format="PNG")
        mask, _ = mask_generator(sample_rng(seed, 0, i), size, size)
        save_mask(mask, out / "masks" / name)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    """Regenerate data/samples with the ``eval`` mask preset (synthetic object shapes, so no data is needed)."""
    from hydra import compose, initialize_config_dir

    from asuka.data.masks import build_mask_generator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/samples")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(version_base="1.3", config_dir=str(configs)):
        cfg = compose(config_name="make_masks", overrides=["mask=eval", "out=unused", "paths.coco_instances=null",
                                                           "paths.object_masks=null"])
    generator = build_mask_generator(cfg.mask, cfg.paths)
    for path in write_samples(args.out, generator, args.n, args.seed, args.size):
        print(path)


if __name__ == "__main__":
    main()
