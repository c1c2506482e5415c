"""The missing GPU figures in one call (``scripts/gpu_figures.sh``): every figure of ``configs/gpu_figures.yaml`` as
its own ``scripts/benchmark.py`` process, most valuable first, each bounded in time and all within one budget.

A figure that fails or runs out of time leaves its log and the others go on; ``summary.md`` / ``summary.json`` are
rewritten after every figure, so a run cut off from outside still leaves a table of what finished. The two FLUX
step counts give the per-step time of each pipeline and the ratio extrapolated to 50 steps (a straight line through
the two medians: fixed cost + steps x per-step cost).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from asuka.utils.compose import configs_dir
from asuka.utils.errors import ConfigError

MODELS = ("real", "tiny")
EXTRAPOLATE_TO = 50  # the paper's sampler steps (spec 7)


def versions() -> dict[str, Any]:
    """What the figures depend on, printed first: torch and its CUDA, the GPU, the libraries the kit brings."""

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    info.update({name: installed(name) for name in ("diffusers", "transformers", "accelerate", "hydra-core")})
    return info


def figure_command(python: str, figure: DictConfig, bench_model: str, device: str, out: Path) -> list[str]:
    """The ``scripts/benchmark.py`` command of one figure, writing ``out/<name>.json``."""
    args = list(figure.args if bench_model == "real" else figure.tiny)
    extra = ["threads=1"] if device == "cpu" else []  # CPU: the clock is this process's CPU time, one thread
    return [python, str(configs_dir().parent / "scripts" / "benchmark.py"), *args, f"device={device}", *extra,
            f"out={out / (figure.name + '.json')}", f"hydra.run.dir={out / 'runs' / figure.name}"]


def _report(out: Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def flux_extrapolation(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-step seconds of ASUKA-FLUX and FLUX.1-Fill and their ratio at 50 steps, from the FLUX inference reports
    at two step counts (the fewest and the most): t(steps) = fixed + steps x per_step for each pipeline."""
    runs = {r["settings"]["steps"]: r["results"] for r in reports
            if r["task"] == "inference" and "asuka_flux_s_median" in r["results"]}
    if len(runs) < 2:
        return None
    lo, hi = min(runs), max(runs)
    out: dict[str, Any] = {"steps": [lo, hi], "extrapolated_to": EXTRAPOLATE_TO}
    at_50 = {}
    for pipe in ("asuka_flux", "flux_fill"):
        t_lo, t_hi = runs[lo][f"{pipe}_s_median"], runs[hi][f"{pipe}_s_median"]
        per_step = (t_hi - t_lo) / (hi - lo)
        if per_step <= 0:  # noise or a one-time cost in the fewer-step run: no line to extrapolate along
            return {"steps": [lo, hi], "extrapolated_to": EXTRAPOLATE_TO,
                    "invalid": f"{pipe}: {t_hi:.4g} s at {hi} steps is not above {t_lo:.4g} s at {lo} steps"}
        fixed = t_lo - lo * per_step
        at_50[pipe] = fixed + EXTRAPOLATE_TO * per_step
        out[f"{pipe}_s_per_step"], out[f"{pipe}_s_fixed"] = per_step, fixed
        out[f"{pipe}_s_at_{EXTRAPOLATE_TO}"] = at_50[pipe]
    out[f"ratio_at_{EXTRAPOLATE_TO}"] = at_50["asuka_flux"] / at_50["flux_fill"]
    return out


def _headline(report: dict[str, Any]) -> str:
    from asuka.benchmark.run import summary_line

    return summary_line(report).splitlines()[0].replace("|", "/")


def write_summary(out: Path, rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """``summary.json`` (every row, the versions, the FLUX extrapolation) and ``summary.md`` (one table)."""
    reports = [r for r in (_report(out, row["name"]) for row in rows if row["status"] == "ok") if r is not None]
    flux = flux_extrapolation(reports)
    lines = [f"# GPU figures ({info.get('gpu') or 'CPU'}, torch {info['torch']}, CUDA {info['cuda']}, "
             f"diffusers {info['diffusers']})", "",
             "| figure | status | seconds | peak memory (MiB) | result |", "|---|---|---|---|---|"]
    for row in rows:
        report = _report(out, row["name"]) if row["status"] == "ok" else None
        memory = (report or {}).get("peak_memory") or {}
        peak = memory.get("peak_memory_mib") or memory.get("peak_rss_mib")
        text = _headline(report) if report else row.get("reason", "")
        lines.append(f"| {row['name']} | {row['status']} | {row.get('seconds', 0):.0f} | "
                     f"{'' if peak is None else f'{peak:.0f}'} | {text} |")
    if flux and "invalid" in flux:
        lines += ["", f"FLUX per step: not extrapolated ({flux['invalid']})"]
    elif flux:
        lines += ["", f"FLUX per step (steps {flux['steps'][0]} and {flux['steps'][1]}): ASUKA-FLUX "
                      f"{flux['asuka_flux_s_per_step']:.4g} s, FLUX.1-Fill {flux['flux_fill_s_per_step']:.4g} s; "
                      f"extrapolated to {EXTRAPOLATE_TO} steps: ratio {flux[f'ratio_at_{EXTRAPOLATE_TO}']:.4f}"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps({"versions": info, "figures": rows, "flux_extrapolation": flux},
                                                 indent=2) + "\n")
    return text


def run_figures(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run every figure of ``cfg.figures`` in order into ``out``; returns the summary rows."""
    bench_model, device = str(cfg.bench_model), str(cfg.device)
    if bench_model not in MODELS:
        raise ConfigError("model", f"expected one of {', '.join(MODELS)}, got '{bench_model}'")
    if device not in ("cpu", "cuda"):
        raise ConfigError("device", f"expected cpu or cuda, got '{device}'")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda asked for, but torch.cuda.is_available() is False on this machine")
    python = str(cfg.python) if cfg.get("python") else sys.executable
    out.mkdir(parents=True, exist_ok=True)
    info = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    deadline = time.monotonic() + float(cfg.budget_s)
    rows: list[dict[str, Any]] = []
    for figure in cfg.figures:
        left = deadline - time.monotonic()
        row: dict[str, Any] = {"name": str(figure.name), "what": str(figure.what)}
        if left < float(cfg.min_figure_s):
            rows.append({**row, "status": "skipped", "reason": f"budget_s={cfg.budget_s} spent"})
            continue
        timeout = min(float(figure.timeout_s), left) if bench_model == "real" else left
        cmd = figure_command(python, figure, bench_model, device, out)
        start = time.monotonic()
        with open(out / f"{figure.name}.log", "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
                status, reason = ("ok", "") if rc == 0 else ("failed", f"exit {rc}, see {figure.name}.log")
            except subprocess.TimeoutExpired:
                status, reason = "timeout", f"over {timeout:.0f} s"
        rows.append({**row, "status": status, "reason": reason, "seconds": time.monotonic() - start})
        print(f"{figure.name}: {status} in {rows[-1]['seconds']:.0f} s {reason}", flush=True)
        write_summary(out, rows, info)
    print(write_summary(out, rows, info), end="")
    return {"versions": info, "figures": rows}
