"""What the engine checks about a run folder before any model loads, so that no command silently loses work.

- A fresh run never starts in a folder that already holds a run (checkpoints or ``final/``): the user resumes it
  (``trainer.resume``), picks another folder, or says ``trainer.overwrite=true``.
- A resume is refused when the checkpoint was made under settings the run cannot continue from (effective batch,
  model, seed, resolution), naming the first difference; other differences are resumed with a loud warning.
- Resuming an older checkpoint explicitly (a rollback) moves the newer checkpoints, ``final/`` and their metrics
  into ``abandoned/<time>/`` instead of leaving them for a later ``resume=latest`` to pick up.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from asuka.training.run_dir import checkpoint as ckpt
from asuka.training.run_dir.info import config_container
from asuka.training.run_dir.layout import CONFIG_FILE, STATE_FILE, RunLayout
from asuka.training.run_dir.lock import acquire_run_lock
from asuka.utils.errors import ConfigError
from asuka.utils.paths import check_writable

log = logging.getLogger("asuka.train")

# Settings a resumed run cannot differ in without breaking the data-order, schedule or weight-shape promises.
RESUME_MUST_MATCH = ("model", "seed", "resolution", "stage")
# Settings that may change between a run and its resume without a word.
RESUME_FREE = (
    "trainer.resume", "trainer.resume_mismatch", "trainer.overwrite", "trainer.max_steps", "trainer.num_workers",
    "trainer.log_every", "trainer.val_every", "trainer.checkpoint_every", "trainer.keep_checkpoints",
    "trainer.val_images", "trainer.cpu", "logger", "paths", "hydra",
)


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def holds_run(run: RunLayout) -> bool:
    """Whether the folder holds checkpoints or ``final/`` of an earlier run."""
    ckpt_dir = run.checkpoints
    return run.final.exists() or (ckpt_dir.is_dir() and any(ckpt.step_of(p) >= 0 for p in ckpt_dir.iterdir()))


def clear_previous_run(run: RunLayout) -> None:
    """``trainer.overwrite=true``: delete the previous run's outputs (crash-safely, folder by folder)."""
    log.warning("trainer.overwrite=true: deleting the previous run's outputs in %s", run.root)
    for path in run.outputs:
        if path.is_dir():
            ckpt.remove_tree(path)
        elif path.exists():
            path.unlink()


def set_aside_stale_metrics(run: RunLayout) -> None:
    """A run killed before its first checkpoint left a metrics.jsonl: keep it under another name, do not append."""
    if run.metrics.is_file():
        stale = run.stale_metrics(time.strftime("%Y%m%d-%H%M%S"))
        os.replace(run.metrics, stale)
        log.warning("%s: a previous run left no checkpoint; its metrics.jsonl was moved to %s", run.root, stale.name)


def check_resume(cfg: DictConfig, path: Path, world_size: int, effective_batch: int) -> None:
    """Compare the checkpoint's state and config with this run's; refuse or warn (``trainer.resume_mismatch``)."""
    state = json.loads((path / STATE_FILE).read_text())
    mode = str(cfg.trainer.get("resume_mismatch", "refuse"))
    if mode not in ("refuse", "warn"):
        raise ConfigError("trainer.resume_mismatch", f"must be refuse or warn, got {mode!r}")
    problems, notes = [], []
    saved_batch = state.get("effective_batch")
    if saved_batch is not None and int(saved_batch) != effective_batch:
        problems.append(
            f"effective batch {saved_batch} in the checkpoint, {effective_batch} now "
            "(batch_size x processes x grad_accum): the data position and LR schedule cannot continue"
        )
    saved_world = state.get("world_size")
    if saved_world is not None and int(saved_world) != world_size:
        notes.append(
            f"{saved_world} process(es) in the checkpoint, {world_size} now: the data continues where it stopped, "
            "but the per-process random streams are reseeded, so the run is not identical to an uninterrupted one"
        )
    if (path / CONFIG_FILE).is_file():
        saved = _flatten(OmegaConf.to_container(OmegaConf.load(path / CONFIG_FILE), resolve=True))
        now = _flatten(config_container(cfg))
        for key in sorted(set(saved) | set(now)):
            if _under(key, RESUME_FREE) or saved.get(key) == now.get(key):
                continue
            change = f"{key} is {saved.get(key)!r} in {path.name}/{CONFIG_FILE} but {now.get(key)!r} now"
            (problems if _under(key, RESUME_MUST_MATCH) else notes).append(change)
    for note in notes:
        log.warning("resuming from %s although %s", path, note)
    if problems:
        if mode == "refuse":
            raise ConfigError(
                "trainer.resume",
                f"cannot resume {path}: {problems[0]}"
                + (f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else "")
                + "; restore the setting, or set trainer.resume_mismatch=warn to resume anyway",
            )
        for problem in problems:
            log.warning("trainer.resume_mismatch=warn: resuming from %s although %s", path, problem)


def set_aside_newer(path: Path, run: RunLayout) -> None:
    """After an explicit rollback to ``path``: move newer checkpoints, ``final/`` and their metrics out of the way."""
    ckpt_dir, step = run.checkpoints, ckpt.step_of(path)
    if path.parent.resolve() != ckpt_dir.resolve():
        return  # a checkpoint from another run folder: this folder's history is not being rolled back
    newer = [p for p in ckpt.list_checkpoints(ckpt_dir) if ckpt.step_of(p) > step]
    if not newer:
        return
    aside = run.abandoned(time.strftime("%Y%m%d-%H%M%S"))
    aside.mkdir(parents=True, exist_ok=True)
    for old in newer + [run.final]:
        if old.exists():
            os.replace(old, aside / old.name)
    log.warning("rolled back to %s: newer checkpoints and final/ moved to %s", path.name, aside)
    trim_metrics(run, step, aside / run.metrics.name)


def trim_metrics(run: RunLayout, step: int, dropped_to: Path | None = None) -> None:
    """Keep only the metrics.jsonl records up to ``step`` (the rest are recomputed by the resumed run)."""
    metrics = run.metrics
    if not metrics.is_file():
        return
    keep, drop = [], []
    for line in metrics.read_text().splitlines():
        (keep if json.loads(line).get("step", 0) <= step else drop).append(line)
    if not drop:
        return
    if dropped_to is not None:
        dropped_to.write_text("\n".join(drop) + "\n")
    tmp = metrics.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, metrics)


def prepare_run_dir(
    cfg: DictConfig, run: RunLayout, world_size: int, effective_batch: int, is_main: bool, barrier: Callable[[], None]
) -> Path | None:
    """Before any model loads: a writable folder without a kill's leftovers, no silent overwrite, a resume that can
    continue. Checks run on every process (so all fail together); changes to the folder only on the main one.
    Returns the checkpoint to resume from, or None for a fresh run."""
    check_writable(run.root, "hydra.run.dir")
    if is_main:
        acquire_run_lock(run.root)  # before anything in the folder changes: one writer at a time
        ckpt.clean_leftovers(run.checkpoints)
    barrier()
    resume = cfg.trainer.get("resume")
    path = ckpt.resolve_resume(resume, run)
    if path is None:
        overwrite = bool(cfg.trainer.get("overwrite", False))
        if holds_run(run) and not overwrite:
            raise ConfigError(
                "trainer.resume",
                f"{run.root} already holds a run (checkpoints or final/); continue it with trainer.resume=latest, "
                "choose another hydra.run.dir, or replace it with trainer.overwrite=true",
            )
        if is_main:
            clear_previous_run(run) if holds_run(run) else set_aside_stale_metrics(run)
    else:
        check_resume(cfg, path, world_size, effective_batch)
        if is_main:
            set_aside_newer(path, run)  # a rollback by path, or resume=latest passing over a damaged newest
            trim_metrics(run, ckpt.step_of(path))
    barrier()
    return path
