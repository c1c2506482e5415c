"""Stage 1: fine-tune the MAE on inpainting masks (paper 3.1).

Every mask from the mixed generator is enlarged to 75% of the patches by dropping random extra patches (the masked
patches are always among the dropped ones); the loss is the pixel MSE on the masked region only.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from asuka.data.datasets import build_train_dataset
from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_import import load_mae
from asuka.training.engine import fit
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput, Validation
from asuka.training.validate import check_number


class MaeStage(Stage):
    name = "mae"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self._dataset = build_train_dataset(cfg)
        init = cfg.paths.get("mae_init")
        mae = load_mae(init, dict(cfg.model.mae)) if init else MaskedAutoencoderViT(**cfg.model.mae)
        self.trainable = {"mae": mae.to(device).train()}

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        check_number(cfg.mae.keep_ratio, "mae.keep_ratio", above=0.0, below=1.0)

    def train_dataset(self) -> Dataset:
        return self._dataset

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("mae", ["mae"], self.cfg.optim)]

    def training_step(self, batch: dict, step: int) -> StepOutput:
        loss, _ = self.trainable["mae"](batch["image"], batch["mask"], keep_ratio=float(self.cfg.mae.keep_ratio))
        return StepOutput({"mae": loss})

    def validate(self, batch: dict) -> Validation:
        """Image, masked image, the MAE's reconstruction."""
        image, mask = batch["image"], batch["mask"]
        return Validation([image, image * (1 - mask), unwrap(self.trainable["mae"]).reconstruct(image, mask)])


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_mae.py``: stage 1 on the shared engine."""
    return fit(cfg, MaeStage, run_dir)
