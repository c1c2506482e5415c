"""What a training stage supplies to the one engine (asuka.training.engine.fit).

The engine owns everything that is the same for every stage: the accelerator, optimizers and schedulers from config,
gradient accumulation, mixed precision, the progress bar, logging, checkpoints, resume, SIGTERM, non-finite losses
and the validation cadence. A stage says only what differs: which modules it builds and which of them train, what one
step computes from a batch, what a validation grid shows and what goes into ``final/``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset


@dataclass
class OptimizerSpec:
    """One optimizer: the trainable modules it updates (names in ``Stage.trainable``, or ``"name.part"`` for a
    submodule of one) and its config (``cfg.optim`` or a sub-block of it)."""

    name: str
    modules: list[str]
    cfg: DictConfig
    lr_scale: dict[str, float] = field(default_factory=dict)  # module name -> lr multiplier


@dataclass
class Validation:
    """A validation grid (rows of ``[N, 3, H, W]`` in [-1, 1]) and numbers the engine logs with it."""

    rows: list[torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class StepOutput:
    """Losses keyed by optimizer name (their graphs must touch only that optimizer's parameters) and scalars to log."""

    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class Stage(abc.ABC):
    """A training stage. ``self.trainable`` maps a name to a trainable module; the engine replaces each entry by its
    prepared (possibly DDP-wrapped) version, so stage code always reads modules from this dict."""

    name: str = "stage"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.cfg = cfg
        self.device = device
        self.weight_dtype = weight_dtype
        self.trainable: dict[str, nn.Module] = {}

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        """Range checks of the stage's own keys, run by the engine before any model loads (one ConfigError each)."""

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """The dataset; the engine samples it with keys ``(epoch, index)`` (see asuka.data.sampler)."""

    @abc.abstractmethod
    def optimizers(self) -> list[OptimizerSpec]:
        """The optimizers to build over ``self.trainable``."""

    @abc.abstractmethod
    def training_step(self, batch: dict, step: int) -> StepOutput:
        """Compute the losses of one micro-batch (already on the device) at optimizer step ``step`` (0-based)."""

    def validate(self, batch: dict) -> Validation:
        """A validation grid of a fixed batch, and numbers to log; the default shows image and masked image."""
        image, mask = batch["image"], batch["mask"]
        return Validation([image, image * (1 - mask)])

    def final_modules(self) -> dict[str, nn.Module]:
        """Modules written to ``final/<name>/`` with ``save_pretrained`` (unwrapped by the engine)."""
        return dict(self.trainable)

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Large frozen modules the engine may shard across processes (``trainer.shard_frozen``); never saved."""
        return {}

    def state_dict(self) -> dict:
        """Extra stage state to checkpoint (plain tensors and numbers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
