"""What the sharded folders of the data floor share: the latent caches (``asuka.data.latent_cache``: a safetensors
file per shard) and the LAR-Gen quadruplet manifest (``asuka.data.quadruplets``: a folder per shard). Both keep an
``index.json`` of their settings, mark a shard done by its appearing complete, and resume by skipping done shards;
what a shard holds and how it is read is each one's own."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

from asuka.utils.errors import AsukaError

INDEX_FILE = "index.json"
Folder = TypeVar("Folder", bound="ShardedFolder")


class ShardedFolder:
    """A folder of shards plus ``index.json``; subclasses say where shard ``s`` lives and when it is complete."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] | None = None

    def shard_path(self, shard: int) -> Path:
        raise NotImplementedError

    def shard_complete(self, shard: int) -> bool:
        raise NotImplementedError

    def num_shards(self, num_items: int, shard_size: int) -> int:
        return -(-num_items // shard_size)

    def write_index(self, meta: dict[str, Any]) -> None:
        """Write ``index.json`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{INDEX_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.root / INDEX_FILE)
        self.meta = meta

    def read_index(self) -> dict[str, Any] | None:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AsukaError(f"{path}: unreadable cache index ({exc})") from None

    @classmethod
    def open(cls: type[Folder], root: str | os.PathLike, expect: Mapping[str, Any] | None = None, hint: str = "",
             what: str = "cache") -> Folder:
        """Open a finished cache for training; AsukaError when it is missing, unfinished, or its index disagrees
        with ``expect`` (the settings the training run needs). ``hint`` says how to fix it, ``what`` names it."""
        cache = cls(root)
        meta = cache.read_index()
        hint = f" ({hint})" if hint else ""
        if meta is None:
            raise AsukaError(f"{cache.root / INDEX_FILE}: no {what} here{hint}")
        if not meta.get("complete"):
            raise AsukaError(f"{cache.root}: the {what} is unfinished{hint}")
        wrong = [k for k, v in (expect or {}).items() if meta.get(k) != v]
        if wrong:
            said = "; ".join(f"{k}: {_short(meta.get(k))} in the cache, {_short(expect[k])} here" for k in wrong)
            raise AsukaError(f"{cache.root}: {what} made for other data ({said}){hint}")
        cache.meta = meta
        return cache


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pending_shards(folder: ShardedFolder, num_items: int, shard_size: int, rank: int, world_size: int) -> list[int]:
    """This rank's shards (``s % world_size == rank``) that are not on disk yet."""
    return [
        s for s in range(folder.num_shards(num_items, shard_size))
        if s % world_size == rank and not folder.shard_complete(s)
    ]
