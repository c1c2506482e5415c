"""The result files of an evaluation run: ``results.json`` (everything, JSON-safe), ``results.md`` (the tables a
person reads) and ``per_image.csv`` (one row per image, what the comparison report reads back)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: ``-`` for a missing or non-finite value, floats to ``digits`` places."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def json_safe(obj: Any) -> Any:
    """numpy scalars to Python ones and NaN/inf to None, so ``results.json`` is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_results(results: dict, rows: list[dict], run_dir: Path) -> None:
    """``results.json`` (everything), ``results.md`` (tables), ``per_image.csv`` (one row per image)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    meta = results["meta"]
    cols = ["count", "fid", "u_ids", "p_ids", "lpips", "psnr", "ssim", "grad", "clip", "color_error"]
    lines = [f"# Evaluation: method={meta['method']}, dataset={meta['dataset']}", ""]
    if meta["weights"] == "random":
        lines += ["**WARNING: RANDOM WEIGHTS. Inception, LPIPS and CLIP are randomly initialised: these numbers check "
                  "the plumbing only and are NOT metrics.**", ""]
    lines += [f"{meta['image_count']} images at {meta['resolution']}px; Inception variant `{meta['variant']}` "
              f"(weights sha256 `{meta['inception_weights_sha256']}`), resize: {meta['resize_mode']}; "
              f"composite: {'on' if meta['composite'] else 'off'}; LPIPS {meta['lpips']['net']} v0.1; "
              f"seed {meta['seed']}.", ""]

    def table(title: str, groups: dict[str, dict]) -> None:
        lines.extend([f"## {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"])
        for label, s in groups.items():
            lines.append(f"| {label} | " + " | ".join(fmt(s.get(c)) for c in cols) + " |")
        lines.append("")

    table("Overall", {"all": results["metrics"]})
    table("By hole area (FID/IDS only for bins with enough images)", results["by_area"])
    if "by_domain" in results:
        table("By domain", results["by_domain"])
    (run_dir / "results.md").write_text("\n".join(lines))
    with open(run_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["name"])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                             for k, v in row.items()})
