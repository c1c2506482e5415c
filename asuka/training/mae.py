"""Stage 1: fine-tune the MAE on inpainting masks (paper 3.1).

Every mask from the mixed generator is enlarged to 75% of the patches by dropping random extra patches (the masked
patches are always among the dropped ones); the loss is the pixel MSE on the masked region only.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from asuka.data.datasets import TrainDataset, build_image_source
from asuka.data.masks import build_mask_generator
from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_import import load_mae
from asuka.training.engine import fit
from asuka.training.stage import OptimizerSpec, Stage, StepOutput


class MaeStage(Stage):
    name = "mae"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self._dataset = TrainDataset(
            build_image_source(cfg.dataset, "train"),
            int(cfg.resolution),
            build_mask_generator(cfg.mask, cfg.paths),
            int(cfg.seed),
        )
        init = cfg.paths.get("mae_init")
        mae = load_mae(init, dict(cfg.model.mae)) if init else MaskedAutoencoderViT(**cfg.model.mae)
        self.trainable = {"mae": mae.to(device).train()}

    def train_dataset(self) -> Dataset:
        return self._dataset

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("mae", ["mae"], self.cfg.optim)]

    def training_step(self, batch: dict, step: int) -> StepOutput:
        loss, _ = self.trainable["mae"](batch["image"], batch["mask"], keep_ratio=float(self.cfg.mae.keep_ratio))
        return StepOutput({"mae": loss})

    def validation_rows(self, batch: dict) -> list[torch.Tensor]:
        mae = self.trainable["mae"]
        mae = getattr(mae, "module", mae)
        image, mask = batch["image"], batch["mask"]
        return [image, image * (1 - mask), mae.reconstruct(image, mask)]


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_mae.py``: stage 1 on the shared engine."""
    return fit(cfg, MaeStage, run_dir)
