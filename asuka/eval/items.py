"""The ground-truth items of an evaluation and their predictions, matched by name.

A silent mismatch between the two is how published IDS came out as 0, so every missing, extra or duplicated name is
one ``DataError`` that lists them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from asuka.utils.errors import DataError

MASK_THRESHOLD = 0.5          # official scripts: mask >= 0.5 is hole
_LIST_LIMIT = 10              # how many names an error message lists before "..."


def item_key(name: str) -> str:
    """The name an image is matched by: its relative path without an image suffix ("0001.png" -> "0001")."""
    from asuka.data.images import IMAGE_EXTENSIONS

    p = Path(str(name))
    return p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_EXTENSIONS else p.as_posix()


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_LIST_LIMIT])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LIST_LIMIT else "")


def match_predictions(keys: Sequence[str], predictions_dir: str | os.PathLike) -> list[Path]:
    """The prediction file of every ground-truth key, matched by file stem (relative path without suffix).

    Any ground truth without a prediction, any prediction without a ground truth, and any two predictions with
    the same stem are one DataError naming them: a silent mismatch is how published IDS came out as 0.
    """
    from asuka.data.images import list_images

    root = Path(predictions_dir)
    if not root.is_dir():
        raise DataError(f"{root}: predictions folder not found")
    found: dict[str, Path] = {}
    dupes: list[str] = []
    for path in list_images(root):
        key = path.relative_to(root).with_suffix("").as_posix()
        if key in found:
            dupes.append(f"{found[key].name}/{path.name}")
        found[key] = path
    if dupes:
        raise DataError(f"{root}: several predictions share a name: {_listing(dupes)}")
    wanted = set(keys)
    missing = [k for k in keys if k not in found]
    extra = [k for k in found if k not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no prediction for {len(missing)} ground-truth image(s): {_listing(missing)}")
        if extra:
            parts.append(f"{len(extra)} prediction(s) match no ground-truth image: "
                         f"{_listing([found[k].relative_to(root).as_posix() for k in extra])}")
        raise DataError(f"{root}: " + "; ".join(parts))
    return [found[k] for k in keys]


def load_items(cfg: DictConfig) -> list[Any]:
    """The dataset's evaluation items, each with a mask (evaluation has no random masks)."""
    from asuka.data.datasets import build_image_source

    items = list(build_image_source(cfg.dataset, "eval"))
    if not items:
        raise DataError(f"dataset {cfg.dataset.get('name')}: no evaluation images found")
    no_mask = [str(it.image) for it in items if getattr(it, "mask", None) is None]
    if no_mask:
        raise DataError(f"dataset {cfg.dataset.get('name')}: evaluation needs a mask for every image; none for "
                        f"{_listing(no_mask)}")
    keys = [item_key(it.name) for it in items]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = sorted({k for k in keys if k in seen or seen.add(k)})
        raise DataError(f"dataset {cfg.dataset.get('name')}: several images share the name(s) {_listing(dup)}")
    return items
