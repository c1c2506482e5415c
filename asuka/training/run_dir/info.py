"""What a run folder records about its run: the resolved config, ``run_info.json`` (world size, device, versions,
commit) and the append-only metrics log. Only the main process writes."""
from __future__ import annotations

import copy
import importlib.metadata
import json
import math
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

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
        "git_commit": git_commit(Path(__file__).resolve().parents[3]),  # the repository holding asuka/
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
