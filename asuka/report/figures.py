"""The report's pictures: per-image metric against hole area (binned, one line per method), per-domain bars and
image grids of the same items across methods. Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from asuka.data.images import load_image, load_mask  # noqa: E402
from asuka.report.runs import EvalRun  # noqa: E402

PLOT_SIZE = (6.0, 4.0)   # our choice: inches at PLOT_DPI -> 600x400 pixel PNGs
PLOT_DPI = 100
HOLE_TINT = (255, 0, 255)  # our choice: the hole shown in magenta on the input column


def plot_by_area(runs: list[EvalRun], metric: str, edges: list[float], path: Path) -> None:
    """Mean of ``metric`` per hole-area bin, one line per method; bins without images are left out."""
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    centres = [(lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:])]
    for run in runs:
        frac = np.array([r["hole_fraction"] for r in run.rows])
        vals = np.array([r[metric] for r in run.rows])
        bin_of = np.clip(np.searchsorted(edges, frac, side="right") - 1, 0, len(centres) - 1)
        xs, ys = [], []
        for b, c in enumerate(centres):
            v = vals[(bin_of == b) & np.isfinite(vals)]
            if len(v):
                xs.append(c)
                ys.append(float(v.mean()))
        ax.plot(xs, ys, marker="o", label=run.label)
    ax.set_xlabel("hole area (fraction of the image)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by hole area")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_by_domain(runs: list[EvalRun], metric: str, path: Path) -> None:
    """Grouped bars of ``metric`` per domain (``results.json`` by_domain), one bar per method."""
    domains = sorted(runs[0].results["by_domain"])
    fig, ax = plt.subplots(figsize=PLOT_SIZE, dpi=PLOT_DPI)
    width = 0.8 / len(runs)
    for k, run in enumerate(runs):
        vals = [run.results["by_domain"].get(d, {}).get(metric) for d in domains]
        ax.bar(np.arange(len(domains)) + k * width, [math.nan if v is None else v for v in vals], width,
               label=run.label)
    ax.set_xticks(np.arange(len(domains)) + 0.4 - width / 2, domains)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by domain")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def disagreement(runs: list[EvalRun], metric: str, count: int) -> list[str]:
    """The ``count`` items with the largest spread (max - min over methods) of ``metric``, largest first."""
    by_name = [{r["name"]: r[metric] for r in run.rows} for run in runs]
    spread = {}
    for row in runs[0].rows:
        vals = [v[row["name"]] for v in by_name if math.isfinite(v[row["name"]])]
        if len(vals) >= 2:
            spread[row["name"]] = max(vals) - min(vals)
    return sorted(spread, key=lambda n: -spread[n])[:count]


def _scored(run: EvalRun, name: str, gt: Image.Image, hole: Image.Image) -> Image.Image:
    """The prediction as the run scored it: pasted into the ground truth outside the hole when composite was on."""
    pred = load_image(run.predictions[name]).resize(gt.size, Image.BICUBIC)
    return Image.composite(pred, gt, hole) if run.results["meta"].get("composite", True) else pred


def image_grid(runs: list[EvalRun], names: list[str], thumb: int, path: Path) -> None:
    """One row per item: input with the hole tinted, each method's prediction (as scored), ground truth;
    ``thumb`` pixels square."""
    cols = len(runs) + 2
    grid = Image.new("RGB", (thumb * cols, thumb * len(names)), "white")
    for i, name in enumerate(names):
        gt = load_image(runs[0].images[name])
        hole = Image.fromarray(load_mask(runs[0].masks[name])).resize(gt.size, Image.NEAREST)
        shown = Image.composite(Image.new("RGB", gt.size, HOLE_TINT), gt, hole)
        tiles = [shown] + [_scored(run, name, gt, hole) for run in runs] + [gt]
        for j, tile in enumerate(tiles):
            grid.paste(tile.resize((thumb, thumb), Image.BICUBIC), (j * thumb, i * thumb))
    grid.save(path)
