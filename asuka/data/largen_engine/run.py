"""``scripts/make_largen_data.py``: mine an image folder into a resumable, rank-split quadruplet manifest."""
from __future__ import annotations

import hashlib
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from asuka.data.images import list_images, load_image
from asuka.data.largen_engine.pipeline import COUNTERS, mine_batch
from asuka.data.largen_engine.stages import Stages, build_stages
from asuka.data.largen_engine.writer import ShardCollector
from asuka.data.sharded_folder import pending_shards
from asuka.data.quadruplets import QuadrupletStore
from asuka.utils.errors import AsukaError, ConfigError, DataError
from asuka.utils.paths import check_writable
from asuka.utils.workers import resolve_num_workers

log = logging.getLogger(__name__)
FORMAT = "asuka-quadruplets-v1"


class _Scenes(torch.utils.data.Dataset):
    """``(index, scene or None)``: the image, shrunk so its long side is at most ``max_side``; None if unreadable."""

    def __init__(self, files: list[Path], max_side: int) -> None:
        self.files, self.max_side = files, max_side

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | None]:
        try:
            img = load_image(self.files[index])
        except (DataError, OSError):
            return index, None
        scale = self.max_side / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
        return index, img


def _as_list(batch: list) -> list:
    """DataLoader collate that keeps ``(index, scene or None)`` pairs as they are."""
    return batch


def _shard_batches(collector: ShardCollector, shards: list[int], batch_size: int) -> Iterator[list[int]]:
    """Batches that never cross a shard, so a shard's content does not depend on which other shards are mined."""
    for shard in shards:
        items = list(collector.shard_items(shard))
        for i in range(0, len(items), batch_size):
            yield items[i: i + batch_size]


def _begin(store: QuadrupletStore, settings: dict[str, Any], state: Any) -> None:
    """Refuse a folder mined with other settings; mark the manifest unfinished; drop temporary shard folders of
    killed runs."""
    existing = store.read_index()
    if existing is not None and {k: existing.get(k) for k in settings} != settings:
        diff = sorted(k for k in settings if existing.get(k) != settings[k])
        raise AsukaError(f"{store.root}: a manifest made with other settings ({', '.join(diff)}) is there; "
                         f"use another out= folder or delete it")
    state.wait_for_everyone()
    if state.is_main_process:
        for stale in store.root.glob(".tmp-shard_*"):
            shutil.rmtree(stale, ignore_errors=True)
        if existing is None or existing.get("complete"):
            store.write_index({**settings, "complete": False})
    state.wait_for_everyone()


def mine_shards(store: QuadrupletStore, files: list[Path], root: Path, stages: Stages, cfg: Mapping[str, Any],
                shards: list[int], show_progress: bool = True) -> list[int]:
    """Mine ``shards`` of the sorted image list ``files`` into ``store``; returns the shards written."""
    from tqdm.auto import tqdm

    collector = ShardCollector(store, len(files), int(cfg["shard_size"]))
    loader = torch.utils.data.DataLoader(
        _Scenes(files, int(cfg["max_side"])), batch_sampler=list(_shard_batches(collector, shards, cfg["batch_size"])),
        num_workers=resolve_num_workers(cfg["num_workers"]), collate_fn=_as_list)
    warned = False
    bar = tqdm(total=sum(len(collector.shard_items(s)) for s in shards), disable=not show_progress,
               desc="mining images", unit="img")
    with torch.no_grad():
        for batch in loader:
            good = [(i, img) for i, img in batch if img is not None]
            counts = collector.counts(batch[0][0] // collector.shard_size)
            mined = mine_batch([img for _, img in good], stages, cfg["filters"], counts) if good else []
            results = {i: (img, inst) for (i, img), inst in zip(good, mined)}
            for index, img in batch:
                source = files[index].relative_to(root).as_posix()
                if img is None and not warned:
                    log.warning("skipping unreadable image %s (further ones are only counted in the summary)",
                                files[index])
                    warned = True
                scene, instances = results.get(index, (None, []))
                collector.add(index, source, scene, instances)
            bar.update(len(batch))
    bar.close()
    return collector.written


def mine(cfg: DictConfig) -> dict[str, Any]:
    """Mine ``cfg.paths.images`` into ``cfg.out`` on every rank (accelerate / torchrun); returns the summary: shards
    written by this rank and, on the main process, the totals of every counter over the whole manifest."""
    from accelerate import PartialState

    if not cfg.paths.get("images"):
        raise ConfigError("paths.images", "give the image folder to mine: paths.images=DIR")
    if not cfg.get("out"):
        raise ConfigError("out", "give the manifest folder to write: out=DIR")
    for key in ("shard_size", "batch_size", "max_side"):
        if int(cfg[key]) < 1:
            raise ConfigError(key, f"must be >= 1, got {cfg[key]}")
    root = Path(cfg.paths.images)
    if not root.is_dir():
        raise DataError(f"{root}: no such image folder (paths.images)")
    check_writable(Path(cfg.out), "out")
    files = list_images(root, exclude=[cfg.out, *(root / p for p in cfg.get("exclude") or [])])
    if not files:
        raise DataError(f"{root}: no images (png/jpg/jpeg/webp/bmp) in this folder (paths.images)")
    names = "\n".join(f.relative_to(root).as_posix() for f in files)
    settings = {"format": FORMAT, "num_items": len(files), "shard_size": int(cfg.shard_size),
                "files_sha256": hashlib.sha256(names.encode()).hexdigest(), "max_side": int(cfg.max_side),
                "stages": OmegaConf.to_container(cfg.stages, resolve=True),
                "filters": OmegaConf.to_container(cfg.filters, resolve=True)}
    state = PartialState(cpu=bool(cfg.cpu))
    store = QuadrupletStore(cfg.out)
    _begin(store, settings, state)
    stages = build_stages(cfg.stages, device=str(state.device))
    todo = pending_shards(store, len(files), int(cfg.shard_size), state.process_index, state.num_processes)
    written = mine_shards(store, files, root, stages, cfg, todo, show_progress=state.is_local_main_process)
    state.wait_for_everyone()
    summary: dict[str, Any] = {"written": len(written), "out": str(store.root)}
    if state.is_main_process:
        summary.update(finish(store, settings))
    state.wait_for_everyone()
    return summary


def finish(store: QuadrupletStore, settings: dict[str, Any]) -> dict[str, Any]:
    """Check every shard is there, total their counters, write the finished index; returns the totals."""
    num_items, shard_size = settings["num_items"], settings["shard_size"]
    shards = store.num_shards(num_items, shard_size)
    absent = [s for s in range(shards) if not store.shard_complete(s)]
    if absent:
        raise AsukaError(f"{store.root}: shards {absent[:5]} are missing after the run; rerun to complete them")
    totals: Counter = Counter()
    unreadable: list[str] = []
    for s in range(shards):
        summary = store.shard_summary(s)
        totals.update(summary["counts"])
        unreadable.extend(summary["unreadable"])
    ranges = {store.shard_path(s).name: [s * shard_size, min(num_items, (s + 1) * shard_size)] for s in range(shards)}
    keys = [f"{stage}_{name}" for stage, names in COUNTERS.items() for name in names]
    counts = {k: totals.get(k, 0) for k in keys}
    counts["quadruplets"] = totals.get("quadruplets", 0)
    store.write_index({**settings, "complete": True, "shards": ranges, "counts": counts})
    return {"shards": shards, "counts": counts, "unreadable": unreadable[:5]}


def report(summary: Mapping[str, Any]) -> str:
    """The end-of-run summary: images seen and unreadable, then what each stage and filter kept."""
    counts = summary["counts"]
    bad = f" (e.g. {', '.join(summary['unreadable'])})" if summary["unreadable"] else ""
    lines = [f"quadruplet manifest {summary['out']}: {counts['quadruplets']} quadruplets, {summary['shards']} shards "
             f"({summary['written']} mined by rank 0), {counts['images_seen']} images seen, "
             f"{counts['images_unreadable']} unreadable{bad}"]
    for stage, names in COUNTERS.items():
        if stage != "images":
            lines.append(f"  {stage}: " + ", ".join(f"{n} {counts[f'{stage}_{n}']}" for n in names))
    return "\n".join(lines)
