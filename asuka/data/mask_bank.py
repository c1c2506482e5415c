"""A mask bank: masks written once by ``scripts/make_masks.py format=bank`` and drawn by training at a fraction of the
cost of generating them (``mask.source=bank``).

On disk: ``masks.npy``, one bit-packed ``[count, size, ceil(size / 8)]`` uint8 array (32 KiB per 512 px mask),
memory-mapped when read; ``kinds.npy``, the kind of each mask (index into ``KINDS``); ``index.json``, written
last, with the settings (seed, size, generator version, mask config). Mask ``i`` is the generator's draw for
``sample_rng(seed, 0, i)``, the same mask that ``format=png`` writes to ``0000i.png``.

A training draw takes every random number from the sample's generator (keyed on (seed, epoch, index)): which bank
mask, random vertical and horizontal flips, a random square crop when the bank is larger than the training
resolution and a random circular roll, so one bank mask yields many distinct masks and a sample is the same in any
worker, process or resume.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from asuka.data.masks.mixed import GENERATOR_VERSION, KINDS
from asuka.data.seeding import sample_rng
from asuka.utils.errors import DataError

BANK_FORMAT = "asuka-mask-bank"
BANK_VERSION = 1
INDEX_FILE, MASKS_FILE, KINDS_FILE = "index.json", "masks.npy", "kinds.npy"
HINT = "write one with: python scripts/make_masks.py format=bank n=N size=S out=DIR"

MaskGenerator = Callable[[np.random.Generator, int, int], "tuple[np.ndarray, str]"]


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_mask_bank(generator: MaskGenerator, n: int, size: int, seed: int, out: str | os.PathLike,
                    settings: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write ``n`` masks of ``size`` x ``size`` (mask i from ``sample_rng(seed, 0, i)``) as a bank in ``out``;
    returns the index. ``settings`` (e.g. the mask config) is recorded in the index for provenance."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # an index marks a finished bank: gone while this one is written
    tmp = out / f".tmp-{MASKS_FILE}.{os.getpid()}"
    bits = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, -(-size // 8)))
    kinds = np.zeros(n, dtype=np.uint8)
    holes = 0
    for i in tqdm(range(n), desc="mask bank", unit="mask", disable=not progress):
        mask, kind = generator(sample_rng(seed, 0, i), size, size)
        bits[i] = np.packbits(mask, axis=-1)
        kinds[i] = KINDS.index(kind)
        holes += int(np.count_nonzero(mask))
    bits.flush()
    del bits
    os.replace(tmp, out / MASKS_FILE)
    np.save(out / KINDS_FILE, kinds)
    index = {"format": BANK_FORMAT, "version": BANK_VERSION, "count": n, "size": size, "seed": seed,
             "generator_version": GENERATOR_VERSION, "hole_ratio_mean": holes / (n * size * size),
             "kinds": {k: int(np.count_nonzero(kinds == j)) for j, k in enumerate(KINDS)},
             "bytes": (out / MASKS_FILE).stat().st_size, "settings": settings or {}}
    _atomic_json(out / INDEX_FILE, index)
    return index


class MaskBank:
    """``bank(rng, height, width) -> (mask, kind)`` like the online generator, drawing from a written bank.

    The bank file is memory-mapped on first use in each process (not pickled into DataLoader workers), so the
    page cache holds one copy for all workers. ``height`` and ``width`` must be equal and at most the bank size.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        path = self.root / INDEX_FILE
        if not path.is_file():
            raise DataError(f"{self.root}: not a finished mask bank (no {INDEX_FILE}); {HINT}")
        try:
            self.index = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable mask bank index ({exc})") from None
        if self.index.get("format") != BANK_FORMAT or self.index.get("version") != BANK_VERSION:
            raise DataError(f"{path}: not a version-{BANK_VERSION} {BANK_FORMAT} index")
        self.count, self.size = int(self.index["count"]), int(self.index["size"])
        try:
            self.kinds = np.load(self.root / KINDS_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:  # missing, torn, or an object array (a pickle): never unpickled
            raise DataError(f"{self.root / KINDS_FILE}: not a mask bank's kinds array ({exc}); {HINT}") from None
        if self.kinds.shape != (self.count,) or (self.root / MASKS_FILE).stat().st_size < self.count * self.size * (
                -(-self.size // 8)):
            raise DataError(f"{self.root}: {MASKS_FILE} / {KINDS_FILE} do not hold {self.count} masks; {HINT}")
        self._bits: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bits": None}

    def __len__(self) -> int:
        return self.count

    def check_resolution(self, resolution: int, key: str = "resolution") -> None:
        """DataError (naming the bank and ``key``) unless square crops of ``resolution`` fit into the bank's masks."""
        if resolution > self.size:
            raise DataError(f"{self.root}: bank masks are {self.size} px, smaller than {key}={resolution}; write a "
                            f"bank with size={resolution}")

    def mask(self, i: int, flip_h: bool = False) -> np.ndarray:
        """Bank mask ``i`` (bool, size x size), as written or flipped left-right. The flip is done on the packed
        bits (bytes reversed, bits read little-endian), 6x cheaper than copying a flipped view."""
        if self._bits is None:
            self._bits = np.load(self.root / MASKS_FILE, mmap_mode="r").view(np.ndarray)  # the map, no memmap calls
        if not flip_h:
            return np.unpackbits(self._bits[i], axis=-1, count=self.size).view(bool)
        row = np.unpackbits(self._bits[i][:, ::-1], axis=-1, bitorder="little").view(bool)
        return row[:, row.shape[1] - self.size:]  # the padding bits of the last byte are now in front

    def __call__(self, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
        if height != width:
            raise DataError(f"{self.root}: the mask bank serves square masks, asked for {height}x{width}")
        self.check_resolution(height)
        i = int(rng.integers(self.count))
        flip_v, flip_h = (rng.random(2) < 0.5).tolist()
        mask = self.mask(i, flip_h)
        if self.size > height:
            y, x = (int(v) for v in rng.integers(0, self.size - height + 1, 2))
            mask = mask[y:y + height, x:x + width]
        if flip_v:
            mask = mask[::-1]
        dy, dx = (int(v) for v in rng.integers(0, height, 2))
        return _roll(mask, dy, dx), KINDS[int(self.kinds[i])]


def _roll(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``np.roll(mask, (dy, dx), axis=(0, 1))`` in one pass (four block copies into a new contiguous array)."""
    h, w = mask.shape
    out = np.empty((h, w), dtype=mask.dtype)
    for src_y, dst_y in ((slice(0, h - dy), slice(dy, h)), (slice(h - dy, h), slice(0, dy))):
        out[dst_y, dx:] = mask[src_y, :w - dx]
        out[dst_y, :dx] = mask[src_y, w - dx:]
    return out
