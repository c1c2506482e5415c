"""The run-folder contract shared by every training script.

``DIR/config.yaml`` (resolved config), ``DIR/run_info.json`` (world size, device, versions, commit),
``DIR/metrics.jsonl`` (one JSON object per logged step), ``DIR/val/step_<step>.png`` (validation grids),
``DIR/checkpoints/checkpoint-<step>/`` and ``DIR/final/<module>/``. Only the main process writes.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

PACKAGES = ("asuka", "torch", "torchvision", "diffusers", "transformers", "timm", "accelerate", "hydra-core")


def config_container(cfg: DictConfig) -> dict:
    """The resolved config without Hydra's own node (present when composed with return_hydra_config)."""
    if "hydra" in cfg:
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True)


def save_config(cfg: DictConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config_container(cfg)), path)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_run_info(path: Path, info: dict) -> None:
    info = {
        **info,
        "versions": package_versions(),
        "git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.write_text(json.dumps(info, indent=2) + "\n")


class MetricsLog:
    """Append-only ``metrics.jsonl``; each line is flushed so a killed run keeps what it logged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean) + "\n")


def make_grid(rows: list[torch.Tensor]) -> Image.Image:
    """Stack rows of ``[N, 3, H, W]`` images in [-1, 1] (resized to the first row's size) into one picture."""
    height, width = rows[0].shape[-2:]
    fitted = []
    for row in rows:
        row = row.detach().float().cpu()
        if row.shape[1] == 1:
            row = row.expand(-1, 3, -1, -1)
        if row.shape[-2:] != (height, width):
            row = F.interpolate(row, size=(height, width), mode="nearest")
        fitted.append(torch.cat(list(row), dim=-1))  # [3, H, N*W]
    grid = torch.cat(fitted, dim=-2)  # [3, R*H, N*W]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array)
