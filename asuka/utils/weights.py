"""Local weight files for frozen third-party networks (Inception, LPIPS trunks): found on disk, never downloaded."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from asuka.utils.errors import AsukaError, ConfigError


def hub_checkpoint_dir() -> Path:
    """The folder torch/torchvision download weights into (honours $TORCH_HOME); we only ever read from it."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, recorded next to every metric so two results can be checked for the same weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_weights_file(
    explicit: str | os.PathLike | None, standard_name: str, url: str, what: str, config_key: str, hint: str = ""
) -> Path:
    """Find a local weights file: ``explicit`` (a file, or a folder holding ``standard_name``), else the torch cache.

    Raises AsukaError naming the file to fetch and where to put it (plus ``hint``); nothing is downloaded.
    """
    if explicit not in (None, ""):
        path = Path(explicit).expanduser()
        if path.is_dir():
            path = path / standard_name
        if not path.is_file():
            raise AsukaError(f"{config_key}={explicit}: {what} weights file {path} not found "
                             f"(expected {standard_name}, from {url})")
        return path
    path = hub_checkpoint_dir() / standard_name
    if not path.is_file():
        raise AsukaError(f"{what} weights not found: put {standard_name} (from {url}) into {path.parent}/ or set "
                         f"{config_key}=/path/to/file; nothing is downloaded{hint}")
    return path


def transformers_folder(folder: str | os.PathLike | None, config_key: str, what: str, hub_id: str) -> Path:
    """The local transformers folder of ``config_key`` (``config.json`` + weights) for the ``what`` metric;
    ConfigError naming the key before any work when it is missing. Nothing is downloaded."""
    path = Path(os.path.expanduser(str(folder))) if folder not in (None, "", "null") else None
    if path is None or not (path / "config.json").is_file():
        raise ConfigError(config_key, f"{path}: the {what} metric needs a local transformers folder of {hub_id} "
                                      "(config.json + weights)")
    if not any(path.glob("*.safetensors")) and os.environ.get("ASUKA_TRUST_PICKLE") != "1":
        raise ConfigError(config_key, f"{path}: no *.safetensors weights (a pickled *.bin is read only with "
                                      "ASUKA_TRUST_PICKLE=1; convert it to safetensors instead)")
    return path
