"""``scripts/compare.py``: finished eval runs of several methods on the same items -> ``report.html`` (one page,
relative links to its PNGs) and ``report.md`` in ``out``."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from asuka.report.figures import disagreement, image_grid, plot_by_area, plot_by_domain
from asuka.report.runs import PER_IMAGE_METRICS, EvalRun, load_comparable
from asuka.utils.errors import ConfigError
from asuka.utils.paths import check_writable

# Table columns in the order of the paper's tables; True = higher is better.
HIGHER_IS_BETTER = {"fid": False, "u_ids": True, "p_ids": True, "lpips": False, "psnr": True, "ssim": True,
                    "grad": False, "clip": True, "color_error": False}


def metric_table(runs: list[EvalRun]) -> tuple[list[str], list[list[Any]], list[set[int]]]:
    """Columns that at least one run has, each run's overall values, and per column the rows holding the best value
    (ties all best; direction from HIGHER_IS_BETTER)."""
    values = [[run.results["metrics"].get(c) for c in HIGHER_IS_BETTER] for run in runs]
    keep = [j for j, _ in enumerate(HIGHER_IS_BETTER) if any(v[j] is not None for v in values)]
    cols = [list(HIGHER_IS_BETTER)[j] for j in keep]
    values = [[v[j] for j in keep] for v in values]
    best = []
    for j, col in enumerate(cols):
        present = [v[j] for v in values if v[j] is not None and math.isfinite(v[j])]
        top = (max if HIGHER_IS_BETTER[col] else min)(present) if present else None
        best.append({i for i, v in enumerate(values) if top is not None and v[j] == top})
    return cols, values, best


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _arrow(col: str) -> str:
    return "↑" if HIGHER_IS_BETTER[col] else "↓"


def compare(cfg: DictConfig) -> Path:
    """Check the runs are comparable, then write the plots, grids, ``report.md`` and ``report.html``."""
    if not cfg.get("out"):
        raise ConfigError("out", "needs the report folder, e.g. out=outputs/compare/places2")
    runs = load_comparable([str(p) for p in cfg.runs or []])
    out = Path(str(cfg.out))
    check_writable(out, "out")
    out.mkdir(parents=True, exist_ok=True)

    edges = [float(e) for e in runs[0].results["meta"]["area_bins"]]
    metrics = [m for m in PER_IMAGE_METRICS
               if any(math.isfinite(r[m]) for run in runs for r in run.rows)]
    figures: list[tuple[str, str]] = []  # (caption, file)
    for m in metrics:
        plot_by_area(runs, m, edges, out / f"area_{m}.png")
        figures.append((f"{m} by hole area", f"area_{m}.png"))
    if all("by_domain" in run.results for run in runs):  # MISATO: the loader's domains; other datasets have none
        for m in metrics:
            plot_by_domain(runs, m, out / f"domain_{m}.png")
            figures.append((f"{m} by domain", f"domain_{m}.png"))

    first = [r["name"] for r in runs[0].rows][: int(cfg.grid_items)]
    disagree = disagreement(runs, str(cfg.disagreement_metric), int(cfg.disagreement_items))
    grids = [("Items", "grid_items.png", first),
             (f"Largest disagreement ({cfg.disagreement_metric} spread across methods)", "grid_disagreement.png",
              disagree)]
    for _, file, names in grids:
        if names:
            image_grid(runs, names, int(cfg.thumb), out / file)
    grids = [g for g in grids if g[2]]

    cols, values, best = metric_table(runs)
    columns = "input (hole in magenta) | " + " | ".join(r.label for r in runs) + " | ground truth"
    _write_md(out, runs, cols, values, best, figures, grids, columns)
    _write_html(out, runs, cols, values, best, figures, grids, columns)
    print(f"[compare] {len(runs)} runs -> {out / 'report.html'}")
    return out


def _warning(runs: list[EvalRun]) -> str | None:
    random = [r.label for r in runs if r.results["meta"].get("weights") == "random"]
    return f"RANDOM WEIGHTS in {', '.join(random)}: plumbing only, not metrics" if random else None


def _write_md(out: Path, runs: list[EvalRun], cols: list[str], values: list[list[Any]], best: list[set[int]],
              figures: list[tuple[str, str]], grids: list[tuple[str, str, list[str]]], columns: str) -> None:
    meta = runs[0].results["meta"]
    lines = ["# Method comparison", "", f"Dataset {meta['dataset']}, {meta['image_count']} images.", ""]
    if _warning(runs):
        lines += [f"**WARNING: {_warning(runs)}**", ""]
    lines += ["| method | " + " | ".join(f"{c} {_arrow(c)}" for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for i, run in enumerate(runs):
        cells = [f"**{_fmt(v)}**" if i in best[j] else _fmt(v) for j, v in enumerate(values[i])]
        lines.append(f"| {run.label} | " + " | ".join(cells) + " |")
    lines.append("")
    for caption, file in figures:
        lines += [f"![{caption}]({file})", ""]
    for caption, file, names in grids:
        lines += [f"## {caption}", "", f"Rows: {', '.join(names)}. Columns: {columns}.", "", f"![{caption}]({file})",
                  ""]
    (out / "report.md").write_text("\n".join(lines))


def _write_html(out: Path, runs: list[EvalRun], cols: list[str], values: list[list[Any]], best: list[set[int]],
                figures: list[tuple[str, str]], grids: list[tuple[str, str, list[str]]], columns: str) -> None:
    e = html.escape
    meta = runs[0].results["meta"]
    head = "".join(f"<th>{e(c)} {_arrow(c)}</th>" for c in cols)
    body = ""
    for i, run in enumerate(runs):
        cells = "".join(f"<td><b>{_fmt(v)}</b></td>" if i in best[j] else f"<td>{_fmt(v)}</td>"
                        for j, v in enumerate(values[i]))
        body += f"<tr><th>{e(run.label)}</th>{cells}</tr>\n"
    warn = f'<p class="warn">WARNING: {e(_warning(runs))}</p>' if _warning(runs) else ""
    figs = "".join(f'<figure><img src="{e(f)}" alt="{e(c)}"><figcaption>{e(c)}</figcaption></figure>'
                   for c, f in figures)
    grid_html = "".join(f"<h2>{e(c)}</h2><p>Rows: {e(', '.join(n))}.<br>Columns: {e(columns)}.</p>"
                        f'<img src="{e(f)}" alt="{e(c)}">' for c, f, n in grids)
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Method comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:0 1em 1em 0}}.warn{{color:#b00;font-weight:bold}}
</style></head><body>
<h1>Method comparison</h1><p>Dataset {e(str(meta['dataset']))}, {meta['image_count']} images.</p>{warn}
<table><tr><th>method</th>{head}</tr>
{body}</table>
<h2>Per-image metrics</h2>{figs}
{grid_html}
</body></html>
"""
    (out / "report.html").write_text(page)
