"""Where the images (and fixed masks) of each dataset live: lists of ``ImageItem`` built from the dataset config.

Layout mistakes (missing or empty roots, images without masks) raise a one-line DataError before any model is
built.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from asuka.data.images import list_images
from asuka.utils.errors import ConfigError, DataError

MISATO_DOMAINS = ("landscape", "indoor", "building", "background")  # 500 consecutive indices each (spec 4.1)
README_HINT = "(see data/README.md)"


@dataclass(frozen=True)
class ImageItem:
    """One image, its fixed mask file (evaluation) or None, its domain (MISATO) or None, and a name for outputs.
    ``center_crop`` asks the evaluation dataset to cut a centred square first (Places2 val_large is not square)."""

    image: Path
    mask: Path | None
    domain: str | None
    name: str
    center_crop: bool = False


def _key(path: Path, root: Path) -> str:
    """Relative path without the extension: how images and masks pair up (a flat folder pairs by file stem)."""
    return path.relative_to(root).with_suffix("").as_posix()


def _images(root: Path, expected: str, exclude: list[Path] | None = None) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected {expected} {README_HINT}")
    images = list_images(root, exclude=exclude)
    if not images:
        raise DataError(f"{root}: no images found; expected {expected} {README_HINT}")
    return images


def _short(paths: list[Any], n: int = 3) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def _paired(images: list[Path], root: Path, mask_root: Path, center_crop: bool = False) -> list[ImageItem]:
    """Pair every image with the mask of the same relative name in ``mask_root``; any unpaired file is an error.

    When no name matches at all and the masks are numbered (``00000.png``..., as scripts/make_masks.py writes
    them), the i-th image in sorted order takes the i-th mask, and the counts must be equal.
    """
    masks = _images(mask_root, "mask images named like the images (or 00000.png... from scripts/make_masks.py)")
    by_key = {_key(m, mask_root): m for m in masks}
    keys = [_key(p, root) for p in images]
    if not set(keys) & set(by_key) and all(Path(k).name.isdigit() for k in by_key):
        if len(masks) != len(images):
            raise DataError(f"{mask_root}: {len(masks)} numbered masks for {len(images)} images in {root}; "
                            f"the counts must be equal")
        pairs = list(zip(images, masks))
    else:
        missing = [p for p, k in zip(images, keys) if k not in by_key]
        if missing:
            raise DataError(f"{mask_root}: no mask for {len(missing)} image(s): {_short(missing)}")
        extra = sorted(set(by_key) - set(keys))
        if extra:
            raise DataError(f"{mask_root}: {len(masks)} masks for {len(images)} images; masks without an image: "
                            f"{_short([by_key[k] for k in extra])}")
        pairs = [(p, by_key[k]) for p, k in zip(images, keys)]
    return [ImageItem(p, m, None, _key(p, root), center_crop) for p, m in pairs]


def _folder(cfg: Mapping[str, Any], split: str, require_masks: bool) -> list[ImageItem]:
    root = Path(cfg["root"])
    mask_root = cfg.get("mask_root")
    if require_masks and not mask_root:
        raise ConfigError("dataset.mask_root", "this dataset needs a mask folder")
    exclude = [Path(mask_root)] if mask_root else None
    images = _images(root, "image files (png/jpg/jpeg/webp/bmp), optionally with masks of the same names",
                     exclude)
    if mask_root:
        return _paired(images, root, Path(mask_root))
    return [ImageItem(p, None, None, _key(p, root)) for p in images]


def _places2(cfg: Mapping[str, Any], split: str) -> list[ImageItem]:
    root = Path(cfg["root"])
    if split == "train":
        folder = root / str(cfg.get("train_split", "train"))
        images = _images(folder, "the Places365-Standard training images at any depth "
                                  "(for a data_256/ copy set dataset.train_split=data_256)")
        return [ImageItem(p, None, None, _key(p, folder)) for p in images]
    folder = root / str(cfg.get("eval_split", "val_large"))
    images = _images(folder, "the Places365-Standard validation images (val_large/Places365_val_00000001.jpg...)")
    masks = cfg.get("masks")
    if not masks:
        return [ImageItem(p, None, None, _key(p, folder), center_crop=True) for p in images]
    if not Path(masks).is_dir():
        raise DataError(f"{masks}: Places2 evaluation mask folder not found; make it with "
                        f"scripts/make_masks.py mask=eval n={len(images)} size=512 out={masks} {README_HINT}")
    return _paired(images, folder, Path(masks), center_crop=True)


def _misato(cfg: Mapping[str, Any], split: str) -> list[ImageItem]:
    root = Path(cfg["root"])
    prefix = str(cfg.get("mask_prefix") or "")
    expected = f"image/0000.png... and mask/{prefix}0000.png..."
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected {expected} {README_HINT}")
    images = _images(root / "image", expected)
    items = []
    for p in images:
        mask = root / "mask" / p.relative_to(root / "image").with_name(prefix + p.name)
        if not mask.is_file():
            raise DataError(f"{mask}: missing mask for {p}; expected mask/{prefix}<image name> "
                            f"(MISATO@1K masks carry the prefix 00: dataset.mask_prefix=\"00\")")
        domain = None
        if p.stem.isdigit() and int(p.stem) < 500 * len(MISATO_DOMAINS):
            domain = MISATO_DOMAINS[int(p.stem) // 500]
        items.append(ImageItem(p, mask, domain, _key(p, root / "image")))
    return items


def build_image_source(dataset_cfg: Mapping[str, Any] | DictConfig, split: str) -> list[ImageItem]:
    """The items of ``dataset_cfg`` (``configs/dataset/*.yaml``) for ``split`` in {"train", "eval"}."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    cfg = OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) else dataset_cfg
    name = cfg.get("name")
    if cfg.get("root") in (None, "", "???"):
        raise ConfigError("dataset.root", f"no data root set for dataset '{name}'")
    if name == "places2":
        return _places2(cfg, split)
    if name == "misato":
        return _misato(cfg, split)
    if name in ("folder", "samples"):
        return _folder(cfg, split, require_masks=name == "samples")
    raise ConfigError("dataset.name", f"unknown dataset {name!r}; expected places2, misato, folder or samples")

