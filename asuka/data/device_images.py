"""Image decode and resize on the training device (``dataset.image_work: gpu``), so loader processes only read files.

The dataset draws the crop box and the flip exactly as the CPU path does (``random_resized_crop_box`` and one
``rng.random()``, in the same order, before the mask), and ships the file bytes with them. On the device,
:func:`decode_crops` decodes the JPEGs with ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA; other formats are
decoded on the CPU), resizes the same box with PIL's own bicubic weights (as two matmuls) and flips. Pixels differ
from the CPU path only by decoder differences and PIL's fixed-point round-off (one level of 255, here and there).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from asuka.utils.errors import DataError

IMAGE_WORK = ("cpu", "gpu")
_JPEG_MAGIC = b"\xff\xd8"


def _decode(encoded: list[torch.Tensor], device: torch.device, names: list[str]) -> list[torch.Tensor]:
    """uint8 RGB ``[3, H, W]`` of each file's bytes: JPEGs in one batched call on ``device``, the rest on the CPU."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpegs = [i for i, data in enumerate(encoded) if bytes(data[:2].tolist()) == _JPEG_MAGIC]
    try:
        if jpegs:
            decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)
            for i, img in zip(jpegs, decoded):
                out[i] = img
        for i, data in enumerate(encoded):
            if out[i] is None:
                out[i] = decode_image(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as exc:
        raise DataError(f"{', '.join(names)}: cannot decode on {device} ({str(exc).splitlines()[0]})") from None
    return out  # type: ignore[return-value]


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


def decode_crops(encoded: list[torch.Tensor], crops: Sequence[Sequence[int]], resolution: int,
                 device: torch.device | str, names: list[str] | None = None) -> torch.Tensor:
    """``[B, 3, R, R]`` float32 in [-1, 1]: each image decoded, its ``(left, top, w, h, flip)`` box resized to
    ``resolution`` as the CPU path's ``PIL.Image.resize(box=..., BICUBIC)`` does (horizontal pass, rounded to 8 bits,
    then vertical pass, rounded: two small matmuls), and flipped left-right where ``flip`` is 1. The crops stay a
    plain list (no tensor), so reading them never waits on the device."""
    device = torch.device(device)
    images = _decode(encoded, device, names or [f"image {i}" for i in range(len(encoded))])
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
    its ``mask``, at the mask's resolution (the engine calls this after moving the batch)."""
    out = dict(batch)
    files = out.pop("file")
    mask = out["mask"]
    out["image"] = decode_crops(out.pop("encoded"), out.pop("crop"), int(mask.shape[-1]), mask.device, files)
    return out
