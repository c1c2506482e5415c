"""Helpers shared by the tests of asuka.data: tiny image folders and the mask presets composed from the real tree."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import compose_config


def write_image(path: Path, array: np.ndarray | None = None, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """An RGB PNG/JPEG at ``path`` (random content unless ``array`` is given); parents are created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (40, 30), box: tuple[int, int, int, int] = (5, 5, 20, 15)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr, mode="L").save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut a file in half, the way an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@functools.lru_cache(maxsize=None)
def preset_config(preset: str):
    """configs/mask/<preset>.yaml composed with the default paths (no COCO, no object folder: synthetic shapes)."""
    cfg = compose_config("make_masks", [f"mask={preset}", "out=unused", "paths.coco_instances=null",
                                        "paths.object_masks=null"])
    return cfg.mask, cfg.paths


def preset_generator(preset: str):
    from asuka.data.masks import build_mask_generator

    mask_cfg, paths_cfg = preset_config(preset)
    return build_mask_generator(mask_cfg, paths_cfg)
