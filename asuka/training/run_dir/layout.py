"""Where everything lives under a training run folder: every name below the folder is spelled here, once.

``config.yaml`` (resolved config), ``run_info.json`` (world size, device, versions, commit), ``metrics.jsonl`` (one
JSON object per logged step), ``val/step_<step>.png`` (validation grids), ``checkpoints/checkpoint-<step>/`` (with
``.tmp-`` and ``.trash-`` siblings while one is written or deleted), ``final/<module>/``, ``abandoned/<time>/`` (what
a rollback set aside), ``metrics-<time>.jsonl`` (a killed run's metrics set aside) and ``.lock`` (the one writer).
"""
from __future__ import annotations

from pathlib import Path

STATE_FILE = "trainer_state.json"  # written last into a checkpoint: a checkpoint folder without it is incomplete
CONFIG_FILE = "config.yaml"        # in the run folder and in every checkpoint
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LOCK_NAME = ".lock"


class RunLayout:
    """The paths of one run folder (nothing is created or read here)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def run_info(self) -> Path:
        return self.root / "run_info.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    def stale_metrics(self, stamp: str) -> Path:
        """Where the metrics of a run killed before its first checkpoint are set aside."""
        return self.root / f"metrics-{stamp}.jsonl"

    @property
    def val(self) -> Path:
        return self.root / "val"

    def val_grid(self, step: int) -> Path:
        return self.val / f"step_{step:07d}.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{PREFIX}{step}"

    def tmp_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{TMP_PREFIX}{PREFIX}{step}"

    @property
    def final(self) -> Path:
        return self.root / "final"

    def abandoned(self, stamp: str) -> Path:
        return self.root / "abandoned" / stamp

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def outputs(self) -> tuple[Path, ...]:
        """What ``trainer.overwrite=true`` deletes: a previous run's results (not the lock, not set-aside history)."""
        return (self.checkpoints, self.final, self.metrics, self.val, self.run_info)
