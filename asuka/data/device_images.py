"""Image decode and resize on the training device (``dataset.image_work: gpu``), so loader processes only read files.

The dataset draws the crop box and the flip exactly as the CPU path does (``random_resized_crop_box`` and one
``rng.random()``, in the same order, before the mask), and ships the file bytes with them. On the device,
:func:`decode_batch` decodes the JPEGs with ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA; other formats are
decoded on the CPU), resizes the same box with PIL's own bicubic weights (as two matmuls) and flips. Pixels differ
from the CPU path only by decoder differences and PIL's fixed-point round-off (one level of 255, here and there).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from asuka.utils.errors import DataError

IMAGE_WORK = ("cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8"


UPRIGHT = {"apply_exif_orientation": True}  # as load_image: the image as displayed, not as the sensor stored it


def _decode(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 RGB ``[3, H, W]`` of each file's bytes: JPEGs in one batched call on ``device``, the rest on the CPU. If
    the batched call fails, each JPEG is decoded alone; a file that fails alone (its body is corrupt) is None."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    def alone(decode: Any, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode(data)
        except RuntimeError:
            return None

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == _JPEG_MAGIC]
    if jpegs:
        try:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device, **UPRIGHT)
        except RuntimeError:
            decoded = [alone(lambda d: decode_jpeg(d, mode=ImageReadMode.RGB, device=device, **UPRIGHT), encoded[i])
                       for i in jpegs]
        for i, img in zip(jpegs, decoded):
            out[i] = img
    for i in sorted(set(range(len(encoded))) - set(jpegs)):
        out[i] = alone(lambda d: decode_image(d, mode=ImageReadMode.RGB, **UPRIGHT).to(device), encoded[i])
    return out


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic kernel (a = -0.5)."""
    a, x = -0.5, np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resample_weights(start: float, stop: float, in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` weights of PIL's bicubic resize of the span ``[start, stop)`` of an axis: the kernel
    widened by the reduction factor (antialiasing), taps clipped to the whole axis (pixels outside the box count,
    as in ``Image.resize(box=...)``), each row normalised to 1."""
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    centers = start + (np.arange(out_size) + 0.5) * scale
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    taps = np.arange(in_size)
    weights = _bicubic((taps[None] - centers[:, None] + 0.5) / filterscale)
    weights *= (taps[None] >= lo[:, None]) & (taps[None] < hi[:, None])
    total = weights.sum(axis=1, keepdims=True)
    return weights / np.where(total == 0, 1.0, total)


def resize_crops(images: list[torch.Tensor], crops: Sequence[Sequence[int]], resolution: int,
                 device: torch.device) -> torch.Tensor:
    """``[B, 3, R, R]`` float32 in [-1, 1]: each decoded image's ``(left, top, w, h, flip)`` box resized to
    ``resolution`` as the CPU path's ``PIL.Image.resize(box=..., BICUBIC)`` does (horizontal pass, rounded to 8 bits,
    then vertical pass, rounded: two small matmuls), and flipped left-right where ``flip`` is 1. The crops stay a
    plain list (no tensor), so reading them never waits on the device."""
    out = torch.empty((len(images), 3, resolution, resolution), dtype=torch.float32, device=device)
    for i, (img, (left, top, w, h, flip)) in enumerate(zip(images, crops)):
        height, width = img.shape[-2:]
        wx = resample_weights(left, left + w, width, resolution)
        wy = resample_weights(top, top + h, height, resolution)
        rows = np.flatnonzero(wy.any(axis=0))  # only the rows the vertical pass reads
        wx_t = torch.from_numpy(wx.T.astype(np.float32)).to(device)
        wy_t = torch.from_numpy(wy[:, rows].astype(np.float32)).to(device)
        band = img[:, int(rows[0]):int(rows[-1]) + 1].float()
        horizontal = (band @ wx_t).round_().clamp_(0, 255)
        patch = (wy_t @ horizontal).round_().clamp_(0, 255)
        out[i] = patch.flip(-1) if flip else patch
    return out.div_(127.5).sub_(1.0)


def decode_batch(batch: dict) -> dict:
    """A collated ``image_work=gpu`` batch (``encoded``, ``crop``, ``file``) with its ``image`` made on the device of
    its ``mask``, at the mask's resolution (the engine calls this after moving the batch). A file whose body does
    not decode (its header was fine in the loader) is dropped from the batch with its sample and added to ``bad``,
    as the CPU path skips an unreadable image; a batch of which no file decodes is a DataError naming them."""
    out = dict(batch)
    files, crops = out.pop("file"), out.pop("crop")
    device = out["mask"].device
    images = _decode(out.pop("encoded"), device)
    keep = [i for i, img in enumerate(images) if img is not None]
    if len(keep) < len(images):
        if not keep:
            raise DataError(f"{', '.join(files)}: no image of the batch decodes on {device}")
        size = len(images)
        out = {k: _rows(v, keep) if k != "bad" and _per_sample(v, size) else v for k, v in out.items()}
        out["bad"] = [*(out.get("bad") or []), *(f for i, f in enumerate(files) if images[i] is None)]
        images, crops = [images[i] for i in keep], [crops[i] for i in keep]
    out["image"] = resize_crops(images, crops, int(out["mask"].shape[-1]), device)
    return out


def _per_sample(value: Any, size: int) -> bool:
    """A collated field with one entry per sample."""
    return (torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size) or \
        (isinstance(value, list) and len(value) == size)


def _rows(value: torch.Tensor | list, keep: list[int]) -> torch.Tensor | list:
    if torch.is_tensor(value):
        return value[torch.tensor(keep, device=value.device)]
    return [value[i] for i in keep]
