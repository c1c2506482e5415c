"""task=data: the CPU cost of one training sample for each stage's dataset and each input option, and the loader
processes per GPU that the stage's FLOPs imply.

Each stage's own config (``configs/train_*.yaml``: resolution, mask preset) builds the real ``TrainDataset`` through
``build_train_dataset``, on a temporary folder of JPEGs (``data.jpeg_size``, synthetic scenes) standing in for
Places2. Options: ``online`` (PIL decode + resize, masks generated), ``bank`` (masks drawn from a temporary mask bank
written by the real writer), ``gpu_decode`` (``dataset.image_work=gpu``: the loader reads bytes and draws the crop;
decode + resize run on the device and are not counted here) and both. Times are this process's CPU time with one
torch thread (a DataLoader worker's setting), so other jobs on a shared machine do not inflate them.

Estimate: a GPU at ``data.mfu`` of ``data.peak_flops`` trains ``mfu * peak / flops_per_image`` images/s; each needs
one sample, so loader processes = images/s x CPU seconds per sample.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.utils.errors import ConfigError

OPTIONS = {
    "online": [],
    "bank": ["mask.source=bank"],
    "gpu_decode": ["dataset.image_work=gpu"],
    "bank+gpu_decode": ["mask.source=bank", "dataset.image_work=gpu"],
}
STAGES = ("train_mae", "train_align", "train_decoder")


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_jpegs(out: Path, n: int, size: int) -> Path:
    """``n`` synthetic scenes as JPEGs (quality 90) of ``size`` px: the stand-in for a Places2 folder."""
    from asuka.data.procedural import make_scene

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_scene(i, size).save(out / f"{i:03d}.jpg", quality=90)
    return out


def cpu_seconds_per_sample(dataset: Any, n: int, warmup: int = 4) -> list[float]:
    """CPU seconds of ``dataset[(1, i)]`` for ``n`` samples, one torch thread."""
    times = []
    with _one_thread():
        for i in range(warmup + n):
            start = time.process_time()
            dataset[(1, i % len(dataset))]
            if i >= warmup:
                times.append(time.process_time() - start)
    return times


def loader_processes(flops_per_image: float | None, cpu_s: float, mfu: float, peak: float) -> float | None:
    """Loader processes one GPU needs: (mfu x peak / FLOPs per image) images/s x CPU seconds per sample."""
    if not flops_per_image:
        return None
    return mfu * peak / float(flops_per_image) * cpu_s


def data(cfg: DictConfig, env: Any) -> dict[str, Any]:
    """The table of ``task=data`` (see the module docstring)."""
    from asuka.utils.compose import compose_config
    from asuka.data.datasets import build_train_dataset
    from asuka.data.mask_bank import write_mask_bank
    from asuka.data.masks import build_mask_generator

    dcfg = OmegaConf.to_container(cfg.get("data") or {}, resolve=True)
    stages, options = list(dcfg.get("stages", STAGES)), list(dcfg.get("options", OPTIONS))
    for key, values, known in (("data.stages", stages, STAGES), ("data.options", options, OPTIONS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            raise ConfigError(key, f"unknown {unknown}, expected some of {', '.join(known)}")
    n, mfu, peak = int(dcfg.get("samples", 32)), float(dcfg.get("mfu", 0.4)), float(dcfg.get("peak_flops", 989e12))
    flops = dcfg.get("flops_per_image") or {}
    tmp = Path(tempfile.mkdtemp(prefix="asuka-bench-data-"))
    jpegs = write_jpegs(tmp / "images", max(8, min(n, 32)), int(dcfg.get("jpeg_size", 512)))
    rows = []
    for stage in stages:
        base = ["dataset=folder", f"dataset.root={jpegs}", "paths.coco_instances=null", "paths.object_masks=null"]
        if cfg.get("size") is not None:
            base.append(f"resolution={env.size}")
        stage_cfg = compose_config(stage, base)
        resolution = int(stage_cfg.resolution)
        bank = tmp / f"bank_{resolution}"
        if any("mask.source=bank" in OPTIONS[o] for o in options) and not bank.exists():
            write_mask_bank(build_mask_generator(stage_cfg.mask, stage_cfg.paths), int(dcfg.get("bank_masks", 64)),
                            resolution, 0, bank, progress=False)
        for option in options:
            extra = [*OPTIONS[option], *([f"mask.bank={bank}"] if "mask.source=bank" in OPTIONS[option] else [])]
            dataset = build_train_dataset(compose_config(stage, [*base, *extra]))
            times = cpu_seconds_per_sample(dataset, n)
            cpu_s = statistics.median(times)
            row = {"stage": stage, "option": option, "resolution": resolution, "cpu_ms_per_sample": cpu_s * 1e3,
                   "cpu_ms_mean": statistics.fmean(times) * 1e3, "flops_per_image": flops.get(stage),
                   "loader_processes_per_gpu": loader_processes(flops.get(stage), cpu_s, mfu, peak)}
            rows.append(row)
            print(f"{stage} {option}: {row['cpu_ms_per_sample']:.2f} ms", file=sys.stderr, flush=True)
    return {"rows": rows, "samples": n, "jpeg_size": int(dcfg.get("jpeg_size", 512)), "mfu": mfu,
            "peak_flops": peak, "clock": "cpu (process time, 1 torch thread)", "images": "synthetic JPEG scenes"}


def data_table(result: dict[str, Any]) -> str:
    """The rows as a text table for the terminal."""
    lines = [f"data: CPU ms per sample (median of {result['samples']}, {result['jpeg_size']} px JPEGs) and loader "
             f"processes per GPU at {result['mfu']:.0%} of {result['peak_flops']:.3g} FLOP/s (estimate)"]
    for row in result["rows"]:
        procs = row["loader_processes_per_gpu"]
        lines.append(f"  {row['stage']:<14} {row['option']:<16} {row['resolution']:>4} px  "
                     f"{row['cpu_ms_per_sample']:7.2f} ms  "
                     f"{'n/a (FLOPs not counted)' if procs is None else f'{procs:.2f} processes'}")
    return "\n".join(lines)
