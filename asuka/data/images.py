"""Image and mask files in, tensors out: every odd PNG/JPEG mode becomes plain RGB, and every read error a DataError."""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from asuka.utils.errors import DataError

if TYPE_CHECKING:  # torch is imported where tensors are made, so mask-only tools start fast
    import torch

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation of the ImageNet-trained encoders (MAE, DINO)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextlib.contextmanager
def _read_errors(path: str | os.PathLike) -> Iterator[None]:
    """A missing, truncated or corrupt file as a one-line DataError naming it."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: cannot read image ({reason})") from None


EXIF_ORIENTATION = 0x0112
_TURNED = (5, 6, 7, 8)  # EXIF orientations stored with width and height swapped


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode a file, so that a truncated or corrupt file fails here with its name, upright as it is
    displayed: a phone JPEG's EXIF orientation is applied (a mask is drawn on the displayed image)."""
    with _read_errors(path):
        img = Image.open(path)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
    return img


def _displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped for the EXIF orientations that turn the image by 90 degrees."""
    w, h = img.size
    return (h, w) if img.getexif().get(EXIF_ORIENTATION, 1) in _TURNED else (w, h)


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit 'L'. 16-bit values are divided by 257 and [0, 1] floats scaled by 255, instead of being
    clipped at 255 as PIL's own convert does."""
    if img.mode == "L":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; 16-bit and float images via :func:`to_gray`, transparent pixels composited on black
    (a plain ``convert("RGB")`` would keep whatever colour hides under alpha 0)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return to_gray(img).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, img).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Read any supported image as RGB, so the rest of the pipeline never sees modes, alpha or 16-bit data."""
    img = _open(path)
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot convert image mode {img.mode} to RGB ({exc})") from None


def load_mask(path: str | os.PathLike, soft: bool = False) -> np.ndarray:
    """Read a mask file as a bool HxW array (True = hole: grayscale value >= 128, 16-bit scaled to 8-bit first), or
    with ``soft`` as its gray values / 255 in float32 (the official ASUKA recipe keeps grey masks, as its
    ``misato_dataset`` reads them).

    Two files that would silently mean "no hole" are refused by name: integer values that are only 0 and 1 (a 0/1
    mask saved as 8 or 16 bits), and transparency (which convention it follows, hole = opaque or hole = transparent,
    cannot be told; the gray value alone is the mask)."""
    img = _open(path)
    if img.mode == "1":
        return np.array(img, dtype=bool)
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min(initial=255) < 255:
            raise DataError(f"{path}: mask has transparent pixels; masks are read from the gray value only (white = "
                            "hole), so save it as a grayscale image without alpha")
    gray = np.asarray(to_gray(img))
    top = int(np.asarray(img).max(initial=0)) if img.mode.startswith("I") else int(gray.max(initial=0))
    if top == 1:
        raise DataError(f"{path}: mask values are only 0 and 1, so no pixel would be a hole (holes are >= 128 of 255); "
                        "save the hole as 255")
    return np.asarray(gray, dtype=np.float32) / 255.0 if soft else gray >= 128


def read_image_header(path: str | os.PathLike) -> tuple[bytes, tuple[int, int]]:
    """The file's bytes and its (width, height) from the header, pixels not decoded (they are decoded on the
    training device: ``dataset.image_work=gpu``); a missing or unrecognisable file is a DataError naming it."""
    with _read_errors(path):
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            return data, _displayed_size(img)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation), from the file header, without decoding where the format allows a cheap integrity check (PNG
    chunk checksums, the JPEG end marker; other formats are decoded): finds bad files before hours of work."""
    with _read_errors(path):
        with Image.open(path) as img:
            size, fmt = _displayed_size(img), img.format
        with Image.open(path) as img:  # verify must come straight after open
            if fmt == "PNG":
                img.verify()
            elif fmt != "JPEG" or not _ends_with(path, b"\xff\xd9"):
                img.load()
    return size


def _ends_with(path: str | os.PathLike, tail: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - len(tail)))
        return f.read() == tail


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image to a float [3, H, W] tensor in [-1, 1] (the package's image convention), ``u / 127.5 - 1`` in
    float32; the bytes are cast and divided in one pass into torch-allocated contiguous 3 x H x W memory (a
    channels-last view would run other conv kernels, with other floats, in every model it reaches)."""
    import torch

    arr = np.asarray(img if img.mode == "RGB" else to_rgb(img), dtype=np.uint8)
    out = torch.empty((arr.shape[2], arr.shape[0], arr.shape[1]), dtype=torch.float32)
    np.divide(arr.transpose(2, 0, 1), np.float32(127.5), out=out.numpy(), dtype=np.float32)
    return out.sub_(1.0)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """Inverse of pil_to_tensor; accepts [3, H, W] or [1, 3, H, W] in [-1, 1] (values outside are clipped)."""
    import torch

    t = t.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise ValueError(f"tensor_to_pil expects [3, H, W] or [1, 3, H, W], got {tuple(t.shape)}")
    arr = ((t.float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def list_images(root: str | os.PathLike, exclude: list[str | os.PathLike] | None = None) -> list[Path]:
    """All image files under root (recursive, sorted, hidden folders skipped); ``exclude`` drops sub-trees such as a
    mask folder that lives inside the image folder."""
    root = Path(root)
    skip = {Path(p).resolve() for p in (exclude or [])}
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip]
        found.extend(here / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
