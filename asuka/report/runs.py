"""Finished evaluation runs read back (``results.json``, ``per_image.csv``, the run's Hydra config), and the check
that they can be compared: same dataset, same items, same masks (by the hash of each decoded mask)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from asuka.data.images import load_mask
from asuka.eval.items import item_key, load_items, match_predictions
from asuka.utils.errors import ConfigError, DataError

# Per-image columns of per_image.csv that hold a metric (the others: name, domain, hole_fraction, area_bin, prediction).
PER_IMAGE_METRICS = ("lpips", "psnr", "ssim", "grad", "clip", "color_error")


@dataclass
class EvalRun:
    """One finished eval run: its label in the report, its results, its per-image rows and its inputs."""

    dir: Path
    label: str
    results: dict[str, Any]
    rows: list[dict[str, Any]]       # per_image.csv, metric values as floats (nan when blank)
    images: dict[str, Path]          # item name -> ground truth file
    masks: dict[str, Path]           # item name -> mask file
    predictions: dict[str, Path]     # item name -> the run's prediction


def _number(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def load_run(path: str | Path) -> EvalRun:
    """Read one run folder; a folder that is not a finished eval run is refused by name."""
    run_dir = Path(path)
    missing = [f for f in ("results.json", "per_image.csv", ".hydra/config.yaml") if not (run_dir / f).is_file()]
    if missing:
        raise DataError(f"{run_dir}: not a finished eval run (no {', '.join(missing)})")
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "per_image.csv", newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    for r in rows:
        r["hole_fraction"] = _number(r["hole_fraction"])
        for m in PER_IMAGE_METRICS:
            r[m] = _number(r.get(m, ""))
    items = load_items(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    keys = [item_key(it.name) for it in items]
    # matched by name inside the predictions folder (never a path read from a file); a moved run folder has its own
    pred_dir = Path(str(results["meta"].get("predictions_dir") or run_dir / "predictions"))
    if not pred_dir.is_dir():
        pred_dir = run_dir / "predictions"
    return EvalRun(run_dir, str(results["meta"]["method"]), results, rows,
                   {k: Path(it.image) for k, it in zip(keys, items)}, {k: Path(it.mask) for k, it in zip(keys, items)},
                   dict(zip(keys, match_predictions(keys, pred_dir))))


def mask_hashes(run: EvalRun) -> dict[str, str]:
    """sha256 of each decoded mask (hole pixels), so the same mask saved in another format still compares equal."""
    out = {}
    for name, path in run.masks.items():
        m = load_mask(path)
        out[name] = hashlib.sha256(np.packbits(m).tobytes() + str(m.shape).encode()).hexdigest()
    return out


def load_comparable(paths: list[str]) -> list[EvalRun]:
    """The runs in the given order, with unique labels; refused in one line unless all scored the same items with
    the same masks on the same dataset."""
    if len(paths) < 2:
        raise ConfigError("runs", "needs at least two eval run folders, e.g. runs=[outputs/eval/a,outputs/eval/b]")
    runs = [load_run(p) for p in paths]
    first, hashes = runs[0], mask_hashes(runs[0])
    for run in runs[1:]:
        a, b = first.results["meta"].get("dataset"), run.results["meta"].get("dataset")
        if a != b:
            raise DataError(f"{run.dir}: not comparable with {first.dir}: dataset {b} vs {a}")
        names_a, names_b = [r["name"] for r in first.rows], [r["name"] for r in run.rows]
        if sorted(names_a) != sorted(names_b):
            diff = sorted(set(names_a) ^ set(names_b))
            raise DataError(f"{run.dir}: not comparable with {first.dir}: other items ({len(names_b)} vs "
                            f"{len(names_a)}; differ: {', '.join(diff[:5]) or 'duplicates'})")
        other = mask_hashes(run)
        changed = sorted(n for n in hashes if other.get(n) != hashes[n])
        if changed:
            raise DataError(f"{run.dir}: not comparable with {first.dir}: other masks for {len(changed)} item(s), "
                            f"e.g. {changed[0]}")
    labels = [r.label for r in runs]
    for run in runs:  # two runs of one method: the folder name tells them apart
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.dir.name})"
    return runs
