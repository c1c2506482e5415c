"""Training and evaluation datasets: crops, flips and masks drawn from the per-sample generator, bad files skipped
deterministically and reported, evaluation pairs checked for consistency."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from asuka.data.device_images import IMAGE_WORK
from asuka.data.images import load_image, load_mask, pil_to_tensor, read_image_header
from asuka.data.seeding import sample_rng
from asuka.data.sources import MISATO_DOMAINS, ImageItem, build_image_source
from asuka.utils.errors import ConfigError, DataError

MaskFn = Callable[[np.random.Generator, int, int], "tuple[np.ndarray, str] | np.ndarray"]

__all__ = ["EvalDataset", "ImageItem", "MISATO_DOMAINS", "TrainDataset", "build_image_source", "build_train_dataset",
           "collate", "random_resized_crop_box"]


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: tuple[float, float] = (0.2, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a crop covering ``scale`` of the area with aspect in ``ratio`` (MAE's
    RandomResizedCrop rule: 10 tries, then a centred crop with the aspect clamped)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    w, h = width, height
    if width / height < ratio[0]:
        h = int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w = int(round(height * ratio[1]))
    return (width - w) // 2, (height - h) // 2, w, h


def _mask_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """DataLoader ``collate_fn``: tensors stacked, ints as a tensor, "bad" lists concatenated, the rest as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [sample[key] for sample in batch]
        if key == "bad":
            out[key] = [path for paths in values for path in paths]
        elif key == "encoded":  # file bytes of different lengths (image_work=gpu)
            out[key] = values
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


class TrainDataset(torch.utils.data.Dataset):
    """Random crops of the source images with a fresh mask each.

    ``dataset[(epoch, index)]`` takes every random number from ``sample_rng(seed, epoch, index)`` (a plain int
    index uses the epoch of ``set_epoch``, 0 by default), so the sample is the same in any worker, process or
    resume. An unreadable image is replaced by the next index (deterministic) and its path is returned in
    ``"bad"``; ``max_bad`` consecutive failures raise DataError. ``"index"`` is the requested index.
    ``image_work="gpu"`` returns the file's bytes and the crop instead of ``"image"`` (decoded on the device).
    """

    def __init__(self, items: Sequence[ImageItem], resolution: int, mask_generator: MaskFn, seed: int,
                 crop_scale: tuple[float, float] = (0.2, 1.0), flip_prob: float = 0.5, max_bad: int = 50,
                 image_work: str = "cpu") -> None:
        if not items:
            raise DataError("training dataset: the image source is empty")
        if image_work not in IMAGE_WORK:
            raise ConfigError("dataset.image_work", f"must be one of {', '.join(IMAGE_WORK)}, got {image_work!r}")
        self.items, self.resolution = list(items), int(resolution)
        self.mask_generator, self.seed = mask_generator, int(seed)
        self.crop_scale, self.flip_prob, self.max_bad = tuple(crop_scale), float(flip_prob), int(max_bad)
        self.image_work = image_work
        self.epoch = 0

    collate = staticmethod(collate)  # the engine takes the DataLoader collate_fn from the dataset

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain-int indices."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _first_readable(self, index: int, read: Callable[[Any], Any]) -> tuple[Any, Any, list[str]]:
        bad: list[str] = []
        for step in range(min(self.max_bad, len(self.items))):
            path = self.items[(index + step) % len(self.items)].image
            try:
                return read(path), path, bad
            except DataError:
                bad.append(str(path))
        raise DataError(f"{bad[-1]}: {len(bad)} consecutive training images failed to load (from index {index})")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (key if isinstance(key, (tuple, list)) else (self.epoch, key))
        epoch, index = int(epoch), int(index)
        if self.image_work == "gpu":
            return self._encoded_sample(epoch, index)
        img, _, bad = self._first_readable(index, load_image)
        rng = sample_rng(self.seed, epoch, index)
        r = self.resolution
        left, top, w, h = random_resized_crop_box(rng, img.width, img.height, self.crop_scale)
        img = img.resize((r, r), Image.BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < self.flip_prob:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return {"image": pil_to_tensor(img), "mask": self.draw_mask(rng), "index": index, "bad": bad}

    def _encoded_sample(self, epoch: int, index: int) -> dict[str, Any]:
        """``image_work=gpu``: the file's bytes and the crop box and flip drawn exactly as above (same random
        numbers, same order, then the mask); ``asuka.data.device_images.decode_batch`` makes the image on the
        device. Only the header is parsed here, so a file whose body is corrupt fails at decode time."""
        (data, (width, height)), path, bad = self._first_readable(index, read_image_header)
        rng = sample_rng(self.seed, epoch, index)
        left, top, w, h = random_resized_crop_box(rng, width, height, self.crop_scale)
        flip = int(rng.random() < self.flip_prob)
        return {"encoded": torch.frombuffer(bytearray(data), dtype=torch.uint8), "crop": (left, top, w, h, flip),
                "file": str(path), "mask": self.draw_mask(rng), "index": index, "bad": bad}

    def draw_mask(self, rng: np.random.Generator) -> torch.Tensor:
        """A training mask ``[1, R, R]`` (float, 1 = hole) from the generator, with the random numbers of ``rng``."""
        mask = self.mask_generator(rng, self.resolution, self.resolution)
        if isinstance(mask, tuple):
            mask = mask[0]
        return _mask_tensor(mask)


def build_train_dataset(cfg: Any) -> "TrainDataset":
    """The training data of every stage: the train split of ``cfg.dataset``, ``cfg.resolution`` crops and masks
    from the ``cfg.mask`` generator, all randomness keyed by ``cfg.seed``."""
    from asuka.data.mask_bank import MaskBank
    from asuka.data.masks import build_mask_generator

    items = build_image_source(cfg.dataset, "train")
    masks = build_mask_generator(cfg.mask, cfg.paths)
    if isinstance(masks, MaskBank):  # before any model loads
        masks.check_resolution(int(cfg.resolution))
    return TrainDataset(items, int(cfg.resolution), masks, int(cfg.seed),
                        image_work=str(cfg.dataset.get("image_work", "cpu")))


class EvalDataset(torch.utils.data.Dataset):
    """Fixed image/mask pairs resized to ``resolution`` (image bicubic, mask nearest then >= 0.5 is hole, or its grey
    values with ``soft``).

    The image and its mask must have the same size before resizing (a mismatch names both files). Items with
    ``center_crop`` (Places2) are cut to a centred square first and, if their size still differs from the mask's,
    resized to it. ``resolution=None`` keeps the file size.
    """

    def __init__(self, items: Sequence[ImageItem], resolution: int | None, soft: bool = False) -> None:
        if not items:
            raise DataError("evaluation dataset: the image source is empty")
        self.items = list(items)
        self.resolution = None if resolution is None else int(resolution)
        self.soft = soft  # grey masks kept as gray / 255 (eval.py recipe=official), else >= 128 is hole

    collate = staticmethod(collate)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[int(index)]
        if item.mask is None:
            raise DataError(f"{item.image}: no mask file for this evaluation image (set the dataset's mask folder)")
        img, mask = load_image(item.image), load_mask(item.mask, soft=self.soft)
        mask_size = (mask.shape[1], mask.shape[0])
        if item.center_crop:
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            box = (left, top, left + side, top + side)
            img = img.crop(box) if (side, side) == mask_size else img.resize(mask_size, Image.BICUBIC, box=box)
        if img.size != mask_size:
            raise DataError(f"{item.image} is {img.width}x{img.height} but its mask {item.mask} is "
                            f"{mask_size[0]}x{mask_size[1]}")
        r = self.resolution
        if r is not None and img.size != (r, r):
            img = img.resize((r, r), Image.BICUBIC)
            mask_img = Image.fromarray(np.round(mask * 255).astype(np.uint8), mode="L").resize((r, r), Image.NEAREST)
            mask = np.asarray(mask_img, dtype=np.float32) / 255.0 if self.soft else np.asarray(mask_img) >= 128
        return {"image": pil_to_tensor(img), "mask": _mask_tensor(mask), "name": item.name, "domain": item.domain,
                "index": int(index)}
