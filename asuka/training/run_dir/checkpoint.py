"""Checkpoints that a kill at any moment cannot corrupt.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>`` and renamed to ``checkpoints/checkpoint-<step>``
only when every file is on disk; ``trainer_state.json`` is written last, so a folder without it is incomplete.
What a checkpoint holds (modules, EMA, optimizers, schedulers, scaler, stage state, RNG per rank, config) is named in
``write_training_state`` and ``read_training_state`` only.
A folder is deleted by first renaming it to ``.trash-<name>`` (atomic), so a kill during a deletion leaves only a
trash folder, which the next start removes: a ``checkpoint-<step>`` is always either complete or absent.
Everything is read back as safetensors or with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from asuka.training.modules import load_module, save_module, unwrap
from asuka.training.run_dir.info import save_config
from asuka.training.run_dir.layout import CONFIG_FILE, PREFIX, STATE_FILE, TMP_PREFIX, TRASH_PREFIX, RunLayout
from asuka.training.stage import Stage
from asuka.utils.errors import AsukaError

log = logging.getLogger(__name__)


def step_of(path: Path) -> int:
    """The step a ``checkpoint-<step>`` folder holds, or -1 for any other name."""
    suffix = path.name[len(PREFIX) :]
    return int(suffix) if path.name.startswith(PREFIX) and suffix.isdigit() else -1


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete ones are skipped with a warning."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in sorted((p for p in ckpt_dir.iterdir() if step_of(p) >= 0), key=step_of):
        if is_complete(path):
            found.append(path)
        else:
            log.warning("skipping incomplete checkpoint %s (no %s)", path, STATE_FILE)
    return found


def damage(path: Path) -> str | None:
    """Why a complete checkpoint cannot be resumed (a torn ``trainer_state.json`` or ``config.yaml``, a truncated
    or corrupt safetensors file), read cheaply (headers, not tensors); None when it looks sound."""
    from omegaconf import OmegaConf
    from safetensors import safe_open

    try:
        json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE}: {str(exc).splitlines()[0]}"
    if (path / CONFIG_FILE).is_file():
        try:
            OmegaConf.load(path / CONFIG_FILE)
        except Exception as exc:  # noqa: BLE001  (yaml's and omegaconf's errors have no common base)
            return f"{CONFIG_FILE}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    for weights in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001  (safetensors raises its own and OS errors)
            return f"{weights.relative_to(path)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def resolve_resume(resume: str | None, run: RunLayout) -> Path | None:
    """``trainer.resume``: null -> None; ``latest`` -> newest sound checkpoint (a damaged newer one is passed over,
    saying so) or None; else a folder path, which must be complete and sound.

    A relative path is looked up in the run folder first, then in the working directory.
    """
    if resume in (None, "", "null"):
        return None
    ckpt_dir = run.checkpoints
    if resume == "latest":
        found = list_checkpoints(ckpt_dir)
        for path in reversed(found):
            problem = damage(path)
            if problem is None:
                return path
            log.warning("trainer.resume=latest: %s is damaged (%s); trying the checkpoint before it", path, problem)
        if found:
            raise AsukaError(f"trainer.resume=latest: every checkpoint in {ckpt_dir} is damaged (the warnings above "
                             "name the files)")
        log.warning("trainer.resume=latest: no complete checkpoint in %s, starting a new run", ckpt_dir)
        return None
    path = Path(str(resume))
    if not path.is_absolute() and (run.root / path).exists():
        path = run.root / path
    if not is_complete(path):
        raise AsukaError(f"trainer.resume={resume}: not a complete checkpoint folder (no {STATE_FILE} in {path})")
    problem = damage(path)
    if problem is not None:
        raise AsukaError(f"trainer.resume={resume}: {path} is damaged ({problem}); resume an earlier checkpoint")
    return path.resolve()


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as tensors and plain lists (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_torch(obj: object, path: Path) -> None:
    """torch.save and fsync, so that the rename that publishes a checkpoint never precedes its data."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def load_torch(path: Path) -> object:
    """A checkpoint file read with ``weights_only=True``; a damaged or tampered file is one clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...: all mean "unreadable")
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AsukaError(f"{path}: cannot be read as a checkpoint file ({type(exc).__name__}: {first_line})") from None


def remove_tree(path: Path) -> None:
    """Delete a folder crash-safely: rename it to a trash name first (atomic), then delete the trash."""
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash)


def clean_leftovers(ckpt_dir: Path) -> None:
    """Remove what a kill can leave behind: temporary and trash folders, and a checkpoint without its state file."""
    if not ckpt_dir.is_dir():
        return
    for path in sorted(ckpt_dir.iterdir()):
        if path.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
        elif step_of(path) >= 0 and not is_complete(path):
            log.warning("removing incomplete checkpoint %s (no %s: left by a kill)", path, STATE_FILE)
            remove_tree(path)


def publish(tmp: Path, final: Path, state: dict) -> None:
    """Write the state file last, then atomically rename the folder into place."""
    with open(tmp / STATE_FILE, "w") as fh:
        json.dump(state, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():  # a re-save of the same step (e.g. SIGTERM right after a scheduled save)
        remove_tree(final)
    os.replace(tmp, final)


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond ``keep`` (never the newest) and stale temporary folders."""
    for stale in ckpt_dir.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    complete = list_checkpoints(ckpt_dir)
    for old in complete[: max(0, len(complete) - max(1, keep))]:
        remove_tree(old)



@dataclass
class TrainingParts:
    """The live objects a checkpoint saves and restores (``ema`` empty when EMA is off, ``scaler`` None without
    fp16)."""

    trainable: dict[str, nn.Module]
    ema: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, object]
    scaler: object | None
    stage: Stage


def write_training_state(folder: Path, parts: TrainingParts, cfg: DictConfig) -> None:
    """The main process's part of a checkpoint: modules, EMA, optimizers, schedulers, scaler, stage, config."""
    for name, module in parts.trainable.items():
        save_module(unwrap(module), folder / name)
    for name, module in parts.ema.items():
        save_module(module, folder / f"ema_{name}")
    for name, optimizer in parts.optimizers.items():
        save_torch(optimizer.state_dict(), folder / f"optimizer_{name}.pt")
        save_torch(parts.schedulers[name].state_dict(), folder / f"scheduler_{name}.pt")
    if parts.scaler is not None:
        save_torch(parts.scaler.state_dict(), folder / "scaler.pt")
    save_torch(parts.stage.state_dict(), folder / "stage.pt")
    save_config(cfg, folder / CONFIG_FILE)


def write_rng_state(folder: Path, rank: int) -> None:
    """Every rank's part of a checkpoint: its RNG streams."""
    save_torch(rng_state(), folder / f"rng_{rank}.pt")


def read_training_state(folder: Path, parts: TrainingParts, rank: int) -> tuple[dict, bool]:
    """Load what ``write_training_state`` and ``write_rng_state`` wrote into the live objects; returns the trainer
    state and whether this rank's RNG state was there (absent when the world size changed)."""
    state = json.loads((folder / STATE_FILE).read_text())
    for name, module in parts.trainable.items():
        load_module(unwrap(module), folder / name)
    for name, module in parts.ema.items():
        load_module(module, folder / f"ema_{name}")
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(load_torch(folder / f"optimizer_{name}.pt"))
        parts.schedulers[name].load_state_dict(load_torch(folder / f"scheduler_{name}.pt"))
    if parts.scaler is not None and (folder / "scaler.pt").is_file():
        parts.scaler.load_state_dict(load_torch(folder / "scaler.pt"))
    parts.stage.load_state_dict(load_torch(folder / "stage.pt"))
    rng_file = folder / f"rng_{rank}.pt"
    if rng_file.is_file():
        set_rng_state(load_torch(rng_file))
    return state, rng_file.is_file()
