"""Turns mined instances into quadruplet records and PNGs, and writes each shard the moment its last image is in."""
from __future__ import annotations

from collections import Counter
from typing import Any

from PIL import Image

from asuka.data.largen_engine.pipeline import MinedInstance
from asuka.data.quadruplets import Quadruplet, QuadrupletStore


class ShardCollector:
    """Collects the images of the shards being mined (in any order) and writes a shard folder when complete."""

    def __init__(self, store: QuadrupletStore, num_items: int, shard_size: int) -> None:
        self.store, self.num_items, self.shard_size = store, num_items, shard_size
        self._records: dict[int, list[dict[str, Any]]] = {}
        self._images: dict[int, dict[str, Image.Image]] = {}
        self._counts: dict[int, Counter] = {}
        self._unreadable: dict[int, list[str]] = {}
        self._seen: dict[int, int] = {}
        self.written: list[int] = []

    def shard_items(self, shard: int) -> range:
        return range(shard * self.shard_size, min(self.num_items, (shard + 1) * self.shard_size))

    def counts(self, shard: int) -> Counter:
        return self._counts.setdefault(shard, Counter())

    def add(self, index: int, source: str, scene: Image.Image | None, instances: list[MinedInstance]) -> None:
        """One image's result (``scene`` None: unreadable); writes the shard when this was its last image."""
        shard = index // self.shard_size
        counts, records, images = self.counts(shard), self._records.setdefault(shard, []), \
            self._images.setdefault(shard, {})
        counts["images_seen"] += 1
        if scene is None:
            self._unreadable.setdefault(shard, []).append(source)
        elif instances:
            folder = self.store.shard_path(shard)
            scene_name = f"{index:07d}.png"
            images[scene_name] = scene
            for k, inst in enumerate(instances):
                qid = f"{index:07d}_{k:02d}"
                names = {"mask": f"{qid}_mask.png", "subject": f"{qid}_subject.png",
                         "subject_mask": f"{qid}_subject_mask.png"}
                images[names["mask"]] = Image.fromarray(inst.mask.astype("uint8") * 255, mode="L")
                images[names["subject"]] = inst.subject
                images[names["subject_mask"]] = inst.subject_mask
                quad = Quadruplet(qid, folder / scene_name, *(folder / names[k] for k in ("mask", "subject",
                                  "subject_mask")), inst.caption, inst.tag, inst.box, inst.scores, source)
                records.append(quad.to_record(self.store.root))
            counts["quadruplets"] += len(instances)
        self._seen[shard] = self._seen.get(shard, 0) + 1
        if self._seen[shard] == len(self.shard_items(shard)):
            unreadable = self._unreadable.pop(shard, [])
            summary = {"counts": dict(self._counts.pop(shard)), "unreadable": unreadable}
            summary["counts"]["images_unreadable"] = len(unreadable)
            self.store.write_shard_folder(shard, self._records.pop(shard), self._images.pop(shard), summary)
            del self._seen[shard]
            self.written.append(shard)
