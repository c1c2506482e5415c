"""One benchmark run: resolve the settings, run the task, check the targets, write the JSON.

The JSON carries everything needed to judge a figure later: the command, the machine (device name, cores, load),
library versions, the date and the git commit, next to the figures themselves.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.benchmark.data import data_table
from asuka.benchmark.common import BenchEnv, cpu_name, resolve_env
from asuka.benchmark.tasks import run_task
from asuka.benchmark.timing import peak_memory, reset_peak_memory
from asuka.utils.compose import configs_dir

# The targets the benchmarks are held to (benchmarks, not tests): see docs/benchmarks.md.
INFERENCE_OVERHEAD_GPU = 0.05   # ASUKA <= 1.05 x SD-inpainting time at 512, 50 steps, bf16, GPU
INFERENCE_OVERHEAD_CPU = 0.15   # ... <= 1.15 x on CPU at 256, 10 steps, fp32
ALIGN_MFU_MIN = 0.35            # stage-2 step >= 35% MFU, bf16, H100-class, 512
MASKS_PER_S_MIN = 500.0         # mixed generator >= 500 masks/s per core at 512
STAGE1_LOADERS_MAX = 8          # stage 1 keeps an H100 busy with <= 8 loader processes (bank or GPU decode)


def evaluate_targets(env: BenchEnv, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets whose setting this run matches, each with its threshold, the value and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, threshold: float, higher_is_better: bool) -> None:
        if value is None:
            out.append({"target": name, "threshold": threshold, "value": None, "met": None})
            return
        met = value >= threshold if higher_is_better else value <= threshold
        margin = value - threshold if higher_is_better else threshold - value
        out.append({"target": name, "threshold": threshold, "value": value, "met": bool(met), "margin": margin})

    if env.task == "inference" and env.model == "sd15":
        if env.device.type == "cuda" and env.dtype == torch.bfloat16 and env.size == 512 and env.steps == 50:
            add("inference ratio asuka/sd at 512, 50 steps, bf16, GPU", result["ratio"], 1 + INFERENCE_OVERHEAD_GPU,
                False)
        if env.device.type == "cpu" and env.size == 256 and env.steps == 10:
            add("inference ratio asuka/sd at 256, 10 steps, CPU", result["ratio"], 1 + INFERENCE_OVERHEAD_CPU, False)
    if env.task == "inference" and env.model == "flux_fill" and env.device.type == "cuda" and env.size == 512 \
            and env.steps == 50 and env.dtype == torch.bfloat16:
        add("inference ratio asuka-flux/flux.1-fill at 512, 50 steps, bf16, GPU", result["ratio"],
            1 + INFERENCE_OVERHEAD_GPU, False)
    if env.task == "train_align" and env.model == "sd15" and env.device.type == "cuda" and env.size == 512:
        add("train_align MFU, bf16, H100-class, 512", result.get("mfu"), ALIGN_MFU_MIN, True)
    if env.task == "masks" and env.size == 512:
        add("masks per second per core at 512", result["masks_per_s"], MASKS_PER_S_MIN, True)
        if result.get("ratio_to_anchor") is not None:
            add("mask mix / LaMa-style anchor at 512, same run, one stream each", result["ratio_to_anchor"], 1.0, True)
            add("mask mix / LaMa-style anchor at 512, same run, seeded per mask", result["ratio_to_anchor_seeded"],
                1.0, True)
    if env.task == "data":
        stage1 = [row["loader_processes_per_gpu"] for row in result["rows"]
                  if row["stage"] == "train_mae" and row["option"] != "online"
                  and row["loader_processes_per_gpu"] is not None]
        if stage1:
            add("stage-1 loader processes per GPU with the bank or GPU decode (estimate)", min(stage1),
                STAGE1_LOADERS_MAX, False)
    if env.task.startswith("train_") and env.model == "sd15" and result.get("data_workers_needed") is not None:
        # informational: loader workers one device needs to keep up (shipped PNG samples, not Places2 JPEGs)
        out.append({"target": "data loading keeps up with 4 workers per device (shipped samples)",
                    "threshold": 4, "value": result["data_workers_needed"],
                    "met": bool(result["data_workers_needed"] <= 4), "margin": 4 - result["data_workers_needed"]})
    return out


def _git_commit() -> str | None:
    try:
        repo = configs_dir().parent
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return f"{head}{'+dirty' if dirty else ''}" if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: the device, the cores this process may use, the load, the libraries (versions
    from the installed metadata: nothing is imported for them)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu_name": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "diffusers": installed("diffusers"),
        "accelerate": installed("accelerate"),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        info["cuda_capability"] = list(torch.cuda.get_device_capability(device))
    return info


def default_output(cfg: DictConfig) -> Path | None:
    """``<hydra run dir>/benchmark.json`` when run from the script, else None (nothing written)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir) / "benchmark.json"
    except (ValueError, ImportError):
        return None


def run_benchmark(cfg: DictConfig, command: str | None = None) -> dict[str, Any]:
    """``python scripts/benchmark.py task=... model=...``: run one task and write its JSON report."""
    if cfg.get("threads") is not None:
        torch.set_num_threads(int(cfg.threads))
    env = resolve_env(cfg)
    report: dict[str, Any] = {
        "command": command or " ".join(["python", *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "task": env.task,
        "model": env.model,
        "settings": {"device": str(env.device), "dtype": str(env.dtype).replace("torch.", ""), "size": env.size,
                     "steps": env.steps, "batch": env.batch, "warmup": env.warmup, "repeats": env.repeats,
                     "seed": env.seed},
        "machine": machine_info(env.device),
    }
    reset_peak_memory(env.device)
    result = run_task(cfg, env)
    report["peak_memory"] = peak_memory(env.device)  # the whole task: model building, warm-up and timed runs
    report["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["results"] = result
    report["targets"] = evaluate_targets(env, result)
    report["config"] = OmegaConf.to_container(cfg, resolve=True)
    out = Path(str(cfg.out)) if cfg.get("out") else default_output(cfg)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
        report["written_to"] = str(out)
    print(summary_line(report))
    if out is not None:
        print(f"wrote {out}")
    return report


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summary_line(report: dict[str, Any]) -> str:
    """A few headline figures on one line, for the terminal."""
    r, task = report["results"], report["task"]
    if task == "inference" and "asuka_flux_s_median" in r:
        text = (f"inference {report['model']} {report['settings']['size']}px {report['settings']['steps']} steps: "
                f"asuka-flux {r['asuka_flux_s_median']:.4g}s, flux.1-fill {r['flux_fill_s_median']:.4g}s, "
                f"ratio {r['ratio']:.4f} ({r['overhead_pct']:+.1f}%)")
    elif task == "inference":
        text = (f"inference {report['model']} {report['settings']['size']}px {report['settings']['steps']} steps: "
                f"asuka {r['asuka_s_median']:.4g}s, sd-inpaint {r['sd_inpaint_s_median']:.4g}s, "
                f"ratio {r['ratio']:.4f} ({r['overhead_pct']:+.1f}%)")
        if r.get("flops_ratio") is not None:
            text += f", FLOP ratio {r['flops_ratio']:.4f}"
    elif task == "masks":
        text = (f"masks {report['settings']['size']}px, per core (CPU time): mix {r['masks_per_s_stream']:.1f}/s on "
                f"one stream, {r['masks_per_s']:.1f}/s seeded per mask")
        if r.get("anchor_masks_per_s"):
            text += (f"; LaMa-style anchor {r['anchor_masks_per_s']:.1f}/s, {r['anchor_masks_per_s_seeded']:.1f}/s; "
                     f"ratio {r['ratio_to_anchor']:.2f}, seeded {r['ratio_to_anchor_seeded']:.2f}")
    elif task == "data":
        text = data_table(r)
    elif task == "largen_data":
        from asuka.benchmark.largen_data import summary_text

        text = summary_text(report)
    else:
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        text = (f"{task} {report['model']} {r['resolution']}px batch {r['batch_per_device']}: "
                f"{r['step_s_median']:.4g}s/step, {r['images_per_s']:.3g} images/s{mfu}")
    for t in report["targets"]:
        if t["met"] is not None:
            text += f"\n  target {t['target']}: {'met' if t['met'] else 'NOT met'} (value {t['value']:.4g}, " \
                    f"threshold {t['threshold']})"
    return text
