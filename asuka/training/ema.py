"""Exponential moving average of the trainable modules (optional, ``trainer.ema``)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from asuka.training.modules import unwrap


class EMA:
    """Keeps a frozen copy of each module; ``update`` moves it towards the live weights by ``1 - decay``."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.decay = decay
        self.modules = {name: copy.deepcopy(unwrap(m)).requires_grad_(False).eval() for name, m in modules.items()}

    @torch.no_grad()
    def update(self, live: dict[str, nn.Module]) -> None:
        for name, shadow in self.modules.items():
            source = dict(unwrap(live[name]).named_parameters())
            for pname, param in shadow.named_parameters():
                if source[pname].requires_grad:
                    param.lerp_(source[pname].detach().to(param.dtype), 1.0 - self.decay)
