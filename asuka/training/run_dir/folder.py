"""``RunFolder``: the one door the engine goes through to a run folder (layout in ``layout.py``; the guards, the
atomic checkpoints and the records behind it in ``guard.py``, ``checkpoint.py`` and ``info.py``)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from accelerate import Accelerator
from omegaconf import DictConfig
from PIL import Image
from torch import nn

from asuka.training.modules import save_module
from asuka.training.run_dir import checkpoint as ckpt
from asuka.training.run_dir.guard import prepare_run_dir
from asuka.training.run_dir.info import MetricsLog, save_config, write_run_info
from asuka.training.run_dir.layout import RunLayout
from asuka.utils.errors import AsukaError


class RunFolder(RunLayout):
    """A training run folder: checked before any model loads, then written by the main process only."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self._metrics = MetricsLog(self.metrics)

    def prepare(
        self, cfg: DictConfig, world_size: int, effective_batch: int, is_main: bool, barrier: Callable[[], None]
    ) -> Path | None:
        """Lock, clean a kill's leftovers, refuse a silent overwrite or an incompatible resume; the checkpoint to
        resume from, or None for a fresh run (see ``guard.prepare_run_dir``)."""
        return prepare_run_dir(cfg, self, world_size, effective_batch, is_main, barrier)

    def record_start(self, cfg: DictConfig, info: dict) -> None:
        """``config.yaml`` and ``run_info.json`` (main process)."""
        self.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config)
        write_run_info(self.run_info, info)

    def log_metrics(self, record: dict) -> None:
        self._metrics.write(record)

    def save_val_grid(self, step: int, grid: Image.Image) -> Path:
        path = self.val_grid(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        return path

    def last_checkpoint(self) -> Path | None:
        found = ckpt.list_checkpoints(self.checkpoints)
        return found[-1] if found else None

    def save_checkpoint(
        self, step: int, acc: Accelerator, parts: ckpt.TrainingParts, state: dict, cfg: DictConfig, keep: int
    ) -> Path:
        """Write ``checkpoint-<step>`` atomically (every rank writes its RNG state), then rotate to ``keep``."""
        tmp, final = self.tmp_checkpoint(step), self.checkpoint(step)
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        ckpt.write_rng_state(tmp, acc.process_index)
        if acc.is_main_process:
            try:
                ckpt.write_training_state(tmp, parts, cfg)
            except OSError as exc:  # a full disk, a quota or `ulimit -f`: the earlier checkpoints are untouched
                ckpt.remove_tree(tmp)
                raise AsukaError(f"{final}: cannot be written ({exc.strerror or exc}); the earlier checkpoints are "
                                 "intact: free space (or raise the limit) and run again with trainer.resume=latest"
                                 ) from None
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.publish(tmp, final, state)
            ckpt.rotate(self.checkpoints, keep)
        acc.wait_for_everyone()
        return final

    @staticmethod
    def load_checkpoint(path: Path, parts: ckpt.TrainingParts, rank: int) -> tuple[dict, bool]:
        """The trainer state of ``path`` with ``parts`` restored, and whether this rank's RNG state was there."""
        return ckpt.read_training_state(path, parts, rank)

    def save_final(self, modules: dict[str, nn.Module]) -> None:
        """``final/<name>/`` in save_pretrained format."""
        for name, module in modules.items():
            save_module(module, self.final / name)
