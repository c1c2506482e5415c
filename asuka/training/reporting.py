"""What a run shows besides its metrics file: validation grids and the trackers (TensorBoard, W&B)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from omegaconf import DictConfig
from PIL import Image

from asuka.training.run_dir.info import config_container


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


def init_trackers(acc: Accelerator, cfg: DictConfig, run_dir: str) -> None:
    """Start ``logger.tracker`` (if any); W&B gets the resolved config and keeps its files inside the run folder."""
    tracker_cfg = cfg.get("logger", {})
    if not tracker_cfg.get("tracker"):
        return
    init_kwargs = {}
    if tracker_cfg.tracker == "wandb":
        init_kwargs = {"wandb": {"entity": tracker_cfg.get("entity"), "mode": tracker_cfg.get("mode"), "dir": run_dir}}
    config = config_container(cfg) if tracker_cfg.tracker == "wandb" else None
    acc.init_trackers(str(tracker_cfg.get("project", "asuka")), config=config, init_kwargs=init_kwargs)


def log_image(acc: Accelerator, grid: Image.Image, step: int) -> None:
    """A validation grid to every tracker that shows images."""
    for tracker in acc.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("val", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"val": wandb.Image(grid)}, step=step)
