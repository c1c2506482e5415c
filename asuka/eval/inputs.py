"""Every evaluation input is checked before any image is generated or scored, and all bad files are named at once.

A bad file found at scoring time would throw away the batches already scored (nothing is written until the end), so
the ground truth, the masks and the predictions are checked first. Images cheaply (``image_size``: header and file
integrity). Masks are decoded, since what is wrong with a mask is in its values: a 0/1-valued file or one with
transparency (refused by ``load_mask``), or no hole at all.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asuka.data.images import image_size, load_mask
from asuka.utils.errors import DataError

_LIST_LIMIT = 10           # how many bad files the error message names before "... (N in all)"


def check_inputs(items: Sequence[Any], pred_paths: Sequence[Path] | None, resolution: int) -> None:
    """One DataError naming every bad file: ground-truth images that cannot be read, masks that cannot be read, have
    no hole or another size than their image, predictions that cannot be read or are not ``resolution`` squared
    (the size the ground truth is scored at)."""
    problems: list[str] = []
    for item in tqdm(items, desc="check inputs", disable=len(items) < 100):
        try:
            width, height = image_size(item.image)
            mask = load_mask(item.mask)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if not mask.any():
            problems.append(f"{item.mask}: mask is empty (no pixel >= 128), so there is nothing to score")
        elif not getattr(item, "center_crop", False) and mask.shape != (height, width):
            problems.append(f"{item.image} is {width}x{height} but its mask {item.mask} is "
                            f"{mask.shape[1]}x{mask.shape[0]}")
    for path in tqdm(pred_paths or [], desc="check predictions", disable=len(pred_paths or []) < 100):
        try:
            size = image_size(path)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if size != (resolution, resolution):
            problems.append(f"{path}: prediction is {size[0]}x{size[1]}, the evaluation resolution is "
                            f"{resolution}x{resolution}")
    if problems:
        shown = "; ".join(problems[:_LIST_LIMIT])
        more = f"; ... ({len(problems)} in all)" if len(problems) > _LIST_LIMIT else ""
        raise DataError(f"{len(problems)} bad input file(s), nothing was generated or scored: {shown}{more}")
