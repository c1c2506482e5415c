"""Sharded on-disk caches of per-image tensors, built once by a (multi-process) script and read by a training set.

Two caches use this: the stage-3 latent-augmentation cache (``scripts/make_latent_aug.py``) and the stage-2 VAE
latents (``scripts/make_align_latents.py``). Both key one tensor by dataset index, so the build is the same: shard
``s`` holds indices ``[s*N, (s+1)*N)``, rank ``s % world_size`` computes it, and a shard file appears only complete.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from asuka.data.sharded_folder import ShardedFolder, pending_shards
from asuka.utils.errors import AsukaError


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.safetensors"


class LatentCache(ShardedFolder):
    """A folder of safetensors shards (``shard_00000.safetensors``: tensors keyed by dataset index) + ``index.json``.

    ``index.json`` records the settings the tensors were made with and maps indices to shards as ranges
    (``"shards": {"shard_00000.safetensors": [start, stop]}``), plus the indices that have no tensor (``"missing"``).
    A shard file appears only complete (written to a temporary name, then renamed), so "the file exists" means "the
    shard is done": a rerun computes only missing shards. Reading is lazy (a few open shards at a time) and survives
    being pickled into dataloader workers.
    """

    def __init__(self, root: str | os.PathLike, max_open: int = 32) -> None:
        super().__init__(root)
        self.max_open = max_open
        self._missing: set[int] = set()
        self._open: OrderedDict[int, Any] = OrderedDict()

    # -- state for pickling: open handles stay behind
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    # -- writing
    def shard_path(self, shard: int) -> Path:
        return self.root / shard_name(shard)

    def shard_complete(self, shard: int) -> bool:
        return self.shard_path(shard).is_file()

    def write_shard(
        self, shard: int, tensors: dict[int, torch.Tensor], start: int, stop: int, missing: list[int]
    ) -> None:
        """Write one shard atomically: a temporary file in the same folder, fsync, rename."""
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{shard_name(shard)}.{os.getpid()}"
        named = {str(i): v.detach().cpu().contiguous() for i, v in tensors.items()}
        metadata = {"start": str(start), "stop": str(stop), "missing": json.dumps(sorted(missing))}
        save_file(named, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates the file private; a shared cache must be readable
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.shard_path(shard))

    def shard_missing(self, shard: int) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(self.shard_path(shard)), framework="pt") as fh:
            return json.loads((fh.metadata() or {}).get("missing", "[]"))

    # -- reading
    @classmethod
    def open(cls, root: str | os.PathLike, expect: Mapping[str, Any] | None = None, hint: str = "",
             what: str = "cache") -> "LatentCache":
        """The finished cache (see :meth:`ShardedFolder.open`), with the indices that have no tensor."""
        cache = super().open(root, expect, hint, what)
        cache._missing = set(int(i) for i in cache.meta.get("missing", []))
        return cache

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.shard_path(shard)
        if not path.is_file():
            return None
        handle = safe_open(str(path), framework="pt")
        self._open[shard] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def has(self, index: int) -> bool:
        meta = self.meta
        return meta is not None and 0 <= index < int(meta["num_items"]) and index not in self._missing

    def get(self, index: int) -> torch.Tensor | None:
        """The cached tensor (float32) of dataset item ``index``, or None if it has none."""
        if not self.has(index):
            return None
        handle = self._handle(index // int(self.meta["shard_size"]))
        if handle is None:
            return None
        try:
            return handle.get_tensor(str(index)).float()
        except Exception:  # key absent (an unreadable image): no tensor
            return None


class ShardWriter:
    """Collects tensors in index order and writes each shard the moment its last item has been seen."""

    def __init__(self, cache: LatentCache, num_items: int, shard_size: int, dtype: torch.dtype) -> None:
        self.cache, self.num_items, self.shard_size, self.dtype = cache, num_items, shard_size, dtype
        self._tensors: dict[int, dict[int, torch.Tensor]] = {}
        self._missing: dict[int, list[int]] = {}
        self._seen: dict[int, int] = {}
        self.written: list[int] = []

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.num_items, (shard + 1) * self.shard_size)

    def add(self, index: int, tensor: torch.Tensor | None) -> None:
        shard = index // self.shard_size
        if tensor is None:
            self._missing.setdefault(shard, []).append(index)
        else:
            self._tensors.setdefault(shard, {})[index] = tensor.detach().to("cpu", self.dtype)
        self._seen[shard] = self._seen.get(shard, 0) + 1
        start, stop = self._bounds(shard)
        if self._seen[shard] == stop - start:
            self.cache.write_shard(shard, self._tensors.pop(shard, {}), start, stop, self._missing.pop(shard, []))
            del self._seen[shard]
            self.written.append(shard)


class _IndexedItems(torch.utils.data.Dataset):
    """``(index, load(index))`` for the indices a rank computes; ``load`` returns None for an unusable item."""

    def __init__(self, indices: list[int], load: Callable[[int], Any]) -> None:
        self.indices, self.load = indices, load

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return self.indices[i], self.load(self.indices[i])


def _keep_lists(batch: list) -> list:
    """DataLoader collate that keeps ``(index, item or None)`` pairs as they are."""
    return batch


def build_sharded_cache(
    out: str | os.PathLike,
    settings: dict[str, Any],
    num_items: int,
    load: Callable[[int], Any],
    compute: Callable[[list[tuple[int, Any]]], list[torch.Tensor]],
    *,
    shard_size: int,
    batch_size: int,
    num_workers: int,
    dtype: torch.dtype,
    state: Any,
    desc: str,
) -> dict[str, Any]:
    """Compute the missing shards of the cache at ``out`` on every rank of ``state`` (accelerate's PartialState),
    then write the index. ``load(index)`` runs in loader workers and gives an item or None (no tensor for that
    index); ``compute([(index, item), ...])`` turns a batch of them into one tensor each. A folder holding a cache made with other
    ``settings`` is refused. Returns ``{"written": shards written by this rank, "out": ...}`` plus, on the main
    process, ``"shards"`` and ``"missing"``.
    """
    from tqdm.auto import tqdm

    cache = LatentCache(out)
    existing = cache.read_index()
    if existing is not None:
        old = {k: existing.get(k) for k in settings}
        if old != settings:
            diff = sorted(k for k in settings if old[k] != settings[k])
            raise AsukaError(f"{cache.root}: a cache made with other settings ({', '.join(diff)}) is there; "
                             f"use another out= folder or delete it")
    state.wait_for_everyone()
    if state.is_main_process and (existing is None or existing.get("complete")):
        cache.write_index({**settings, "complete": False})
    state.wait_for_everyone()

    todo = pending_shards(cache, num_items, shard_size, state.process_index, state.num_processes)
    indices = [i for s in todo for i in range(s * shard_size, min(num_items, (s + 1) * shard_size))]
    loader = torch.utils.data.DataLoader(
        _IndexedItems(indices, load), batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_lists
    )
    writer = ShardWriter(cache, num_items, shard_size, dtype)
    bar = tqdm(total=len(indices), disable=not state.is_local_main_process, desc=f"{desc} (rank {state.process_index})")
    with torch.no_grad():
        for batch in loader:
            good = [(i, item) for i, item in batch if item is not None]
            results = dict(zip((i for i, _ in good), compute(good))) if good else {}
            for index, _ in batch:
                writer.add(index, results.get(index))
            bar.update(len(batch))
    bar.close()
    state.wait_for_everyone()
    summary: dict[str, Any] = {"written": len(writer.written), "out": str(cache.root)}
    if state.is_main_process:
        shards = cache.num_shards(num_items, shard_size)
        absent = [s for s in range(shards) if not cache.shard_complete(s)]
        if absent:
            raise AsukaError(f"{cache.root}: shards {absent[:5]} are missing after the build; rerun to complete them")
        missing = sorted(i for s in range(shards) for i in cache.shard_missing(s))
        ranges = {shard_name(s): [s * shard_size, min(num_items, (s + 1) * shard_size)] for s in range(shards)}
        cache.write_index({**settings, "complete": True, "shards": ranges, "missing": missing})
        summary.update(shards=shards, missing=len(missing))
    state.wait_for_everyone()
    return summary
