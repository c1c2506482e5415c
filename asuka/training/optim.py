"""Optimizers and learning-rate schedules from config, the same for every stage."""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import nn

from asuka.utils.errors import ConfigError


def param_groups(
    modules: dict[str, nn.Module], weight_decay: float, lr: float, lr_scale: dict[str, float] | None = None
) -> list[dict]:
    """Trainable parameters split so that norms, biases and other 1-d tensors get no weight decay (MAE recipe)."""
    groups: list[dict] = []
    for name, module in modules.items():
        scale = (lr_scale or {}).get(name, 1.0)
        decay, no_decay = [], []
        for pname, param in module.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if param.ndim <= 1 or pname.endswith(".bias") else decay).append(param)
        for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": wd, "lr": lr * scale, "lr_scale": scale})
    if not groups:
        raise ConfigError("optim", f"no trainable parameters in {sorted(modules)}")
    return groups


def resolve_lr(optim_cfg: DictConfig, effective_batch: int) -> float:
    """``lr``, or ``base_lr x effective_batch / 256`` when ``scale_lr`` is set (MAE's linear scaling rule)."""
    if optim_cfg.get("scale_lr", False):
        return float(optim_cfg.base_lr) * effective_batch / 256
    return float(optim_cfg.lr)


def build_optimizer(groups: list[dict], optim_cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW or Adam with the configured betas; the weight decay lives in the groups."""
    name = str(optim_cfg.get("name", "adamw")).lower()
    betas = tuple(optim_cfg.get("betas", (0.9, 0.999)))
    eps = float(optim_cfg.get("eps", 1e-8))
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=betas, eps=eps)
    if name == "adam":
        return torch.optim.Adam(groups, betas=betas, eps=eps)
    raise ConfigError("optim.name", f"unknown optimizer '{name}' (adamw | adam)")


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up, then constant or half-cycle cosine down to ``min_ratio`` of the peak."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ConfigError("optim.schedule", f"unknown schedule '{schedule}' (constant | cosine)")


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: DictConfig, max_steps: int, peak_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over optimizer steps implementing ``lr_multiplier``."""
    warmup = int(optim_cfg.get("warmup_steps", 0))
    schedule = str(optim_cfg.get("schedule", "constant"))
    min_ratio = float(optim_cfg.get("min_lr", 0.0)) / peak_lr if peak_lr > 0 else 0.0
    lr_multiplier(0, warmup, max_steps, schedule, min_ratio)  # validate the schedule name now
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, warmup, max_steps, schedule, min_ratio)
    )
