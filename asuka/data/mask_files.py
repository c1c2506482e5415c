"""Fixed mask files (evaluation sets, shipped samples): mask i is drawn from ``sample_rng(seed, 0, i)``, so a seed
reproduces every file byte for byte, and any subset on its own."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from asuka.data.seeding import sample_rng
from asuka.utils.errors import ConfigError

MaskGenerator = Callable[[np.random.Generator, int, int], "tuple[np.ndarray, str]"]


def save_mask(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a bool mask as an 8-bit grayscale PNG, 255 = hole, 0 = known."""
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format="PNG")


def write_masks(generator: MaskGenerator, n: int, size: int, seed: int, out: str | os.PathLike,
                progress: bool = True) -> list[dict[str, Any]]:
    """Write ``out/00000.png``... and ``out/manifest.jsonl``; returns the manifest rows
    ``{"file", "kind", "hole_ratio", "generator_version"}`` (the ratio is the written file's exact fraction of hole
    pixels; the version says which generator revision the seed's masks come from)."""
    from asuka.data.masks import GENERATOR_VERSION

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(n), desc="masks", unit="mask", disable=not progress):
        mask, kind = generator(sample_rng(seed, 0, i), size, size)
        name = f"{i:05d}.png"
        save_mask(mask, out / name)
        rows.append({"file": name, "kind": kind, "hole_ratio": int(np.count_nonzero(mask)) / mask.size,
                     "generator_version": GENERATOR_VERSION})
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def make_masks(cfg: DictConfig) -> list[dict[str, Any]]:
    """Body of scripts/make_masks.py: check ``n``, ``size``, ``seed``, ``out``, ``format`` and write the masks (PNG
    files, or a mask bank)."""
    from asuka.data.mask_bank import write_mask_bank
    from asuka.data.masks import build_mask_generator

    if OmegaConf.is_missing(cfg, "out") or not cfg.out:
        raise ConfigError("out", "required: the folder to write the masks to (out=DIR)")
    for key, minimum in (("n", 1), ("size", 8), ("seed", 0)):
        value = cfg.get(key)
        if not isinstance(value, int) or value < minimum:
            raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    fmt = cfg.get("format", "png")
    if fmt not in ("png", "bank"):
        raise ConfigError("format", f"must be png or bank, got {fmt!r}")
    if cfg.mask.get("source", "online") != "online":
        raise ConfigError("mask.source", "make_masks writes the online generator's masks: leave mask.source=online")
    generator = build_mask_generator(cfg.mask, cfg.paths)
    if fmt == "bank":
        index = write_mask_bank(generator, cfg.n, cfg.size, cfg.seed, cfg.out,
                                settings={"mask": OmegaConf.to_container(cfg.mask, resolve=True)})
        print(f"wrote a mask bank of {index['count']} masks ({cfg.size}x{cfg.size}, seed {cfg.seed}, "
              f"{index['bytes'] / 2**20:.1f} MiB) to {cfg.out}: {index['kinds']}")
        return [index]
    rows = write_masks(generator, cfg.n, cfg.size, cfg.seed, cfg.out)
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    print(f"wrote {len(rows)} masks ({cfg.size}x{cfg.size}, seed {cfg.seed}) to {cfg.out}: {kinds}")
    return rows
