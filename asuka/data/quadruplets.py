"""LAR-Gen training quadruplets (scene, instance mask, subject cut-out, local text) and their on-disk manifest.

A manifest root holds ``index.json`` and one folder per shard, ``shard_00000/``, with ``quadruplets.jsonl`` (one
record per line), the PNGs the records name (paths relative to the root), and ``summary.json`` (the counts of the
data engine for that shard). Shard ``s`` covers the source images ``[s*N, (s+1)*N)`` of the sorted image list; rank
``s % world_size`` mines it; a shard folder appears only complete (built under a temporary name, then renamed), so a
rerun redoes only missing shards. ``index.json`` is the latent caches' index (``asuka.data.sharded_folder``) with
``"complete": true`` once every shard exists. Written by ``scripts/make_largen_data.py``; read by ``load_manifest``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image

from asuka.data.sharded_folder import ShardedFolder
from asuka.utils.errors import DataError
from asuka.utils.paths import inside

RECORDS_FILE = "quadruplets.jsonl"
SUMMARY_FILE = "summary.json"
MANIFEST_HINT = "make it with scripts/make_largen_data.py paths.images=DIR out=DIR"


@dataclass(frozen=True)
class Quadruplet:
    """One mined instance. ``scene``: RGB image; ``mask``: L image of the scene's size, 255 = instance (the hole);
    ``subject``: RGB cut-out of the instance's box on white; ``subject_mask``: L, its mask; ``box``: ``(x0, y0, x1,
    y1)`` scene pixels, x1/y1 exclusive; ``scores``: the stages' confidences; ``source``: the original image file."""

    id: str
    scene: Path
    mask: Path
    subject: Path
    subject_mask: Path
    caption: str
    tag: str
    box: tuple[int, int, int, int]
    scores: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def to_record(self, root: str | os.PathLike) -> dict[str, Any]:
        """The JSON line of this quadruplet, with its files relative to the manifest ``root``."""
        root = Path(root)
        files = {k: Path(getattr(self, k)).relative_to(root).as_posix() for k in _FILES}
        return {"id": self.id, **files, "caption": self.caption, "tag": self.tag, "box": list(self.box),
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()}, "source": self.source}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], root: str | os.PathLike) -> "Quadruplet":
        root, qid = Path(root), str(record["id"])
        what = f"{root}: quadruplet {qid!r}"
        inside(root, qid, f"{what}: id")  # ids name files that LAR-Gen and eval write under their run folders
        return cls(id=qid, **{k: inside(root, str(record[k]), f"{what}: {k}") for k in _FILES},
                   caption=str(record["caption"]),
                   tag=str(record["tag"]), box=tuple(int(v) for v in record["box"]),
                   scores={k: float(v) for k, v in record["scores"].items()}, source=str(record["source"]))


_FILES = ("scene", "mask", "subject", "subject_mask")


class QuadrupletStore(ShardedFolder):
    """The manifest folder: the latent caches' index and resume logic (``ShardedFolder``), with a folder of files per
    shard."""

    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard_{shard:05d}"

    def shard_complete(self, shard: int) -> bool:
        return self.shard_path(shard).is_dir()

    def write_shard_folder(self, shard: int, records: list[dict[str, Any]], images: dict[str, Image.Image],
                           summary: Mapping[str, Any]) -> None:
        """Write one shard atomically: PNGs (``images``: name inside the shard -> image), the JSON lines and the
        summary go to a temporary folder that is renamed to ``shard_XXXXX`` when complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.shard_path(shard)
        tmp = self.root / f".tmp-{final.name}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, img in images.items():
            img.save(tmp / name, format="PNG")
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        (tmp / RECORDS_FILE).write_text(lines)
        (tmp / SUMMARY_FILE).write_text(json.dumps(dict(summary), indent=1, sort_keys=True) + "\n")
        os.replace(tmp, final)

    def shard_summary(self, shard: int) -> dict[str, Any]:
        return json.loads((self.shard_path(shard) / SUMMARY_FILE).read_text())

    def shard_records(self, shard: int) -> list[dict[str, Any]]:
        path = self.shard_path(shard) / RECORDS_FILE
        if not path.is_file():
            raise DataError(f"{path}: missing shard of the quadruplet manifest ({MANIFEST_HINT})")
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: unreadable quadruplet records ({exc})") from None


def load_manifest(root: str | os.PathLike) -> list[Quadruplet]:
    """All quadruplets of a finished manifest, in shard order; AsukaError naming the folder when it is missing or
    unfinished, DataError naming the file when a shard is gone or unreadable."""
    store = QuadrupletStore.open(root, hint=MANIFEST_HINT, what="quadruplet manifest")
    shards = sorted(int(name.rsplit("_", 1)[1]) for name in store.meta.get("shards", {}))
    return [Quadruplet.from_record(r, store.root) for s in shards for r in store.shard_records(s)]


def cut_out_subject(scene: Image.Image, mask: np.ndarray, box: tuple[int, int, int, int]
                    ) -> tuple[Image.Image, Image.Image]:
    """The subject (the box's pixels, white where ``mask`` is False) and its L mask (255 = subject)."""
    x0, y0, x1, y1 = box
    rgb = np.asarray(scene.convert("RGB"))[y0:y1, x0:x1]
    keep = mask[y0:y1, x0:x1]
    subject = np.where(keep[..., None], rgb, np.uint8(255)).astype(np.uint8)
    return Image.fromarray(subject, mode="RGB"), Image.fromarray(keep.astype(np.uint8) * 255, mode="L")
