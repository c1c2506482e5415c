"""A minimal real Stage for testing the engine on its own: a linear model on synthetic data with random noise in
the step (so that RNG restore matters) and two optimizers (so that multi-optimizer stages are covered)."""
from __future__ import annotations

import os
import signal

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from asuka.data.seeding import sample_rng
from asuka.training.stage import OptimizerSpec, Stage, StepOutput


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 12, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        rng = sample_rng(self.seed, epoch, index)
        x = torch.from_numpy(rng.standard_normal(8).astype(np.float32))
        image = torch.zeros(3, 8, 8) + x[:3, None, None]
        return {"image": image, "mask": torch.zeros(1, 8, 8), "x": x, "index": index, "bad": []}

    @staticmethod
    def collate(items):
        out = {k: torch.stack([it[k] for it in items]) for k in ("image", "mask", "x")}
        out["index"] = torch.tensor([it["index"] for it in items])
        out["bad"] = [p for it in items for p in it["bad"]]
        return out


class ToyStage(Stage):
    name = "toy"

    def __init__(self, cfg, device, weight_dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self.trainable = {"net": nn.Linear(8, 8).to(device), "head": nn.Linear(8, 1).to(device)}
        self.seen: list[int] = []

    def train_dataset(self):
        return ToyDataset(seed=int(self.cfg.seed))

    def optimizers(self):
        return [OptimizerSpec("net", ["net"], self.cfg.optim), OptimizerSpec("head", ["head"], self.cfg.optim)]

    def training_step(self, batch, step):
        self.seen.extend(batch["index"].tolist())
        toy = self.cfg.get("toy", {})
        if step + 1 == toy.get("sigterm_at_step"):  # as a scheduler's pre-emption would
            os.kill(os.getpid(), signal.SIGTERM)
        noise = torch.randn_like(batch["x"]) * 0.1
        h = self.trainable["net"](batch["x"] + noise)
        loss_net = (h - batch["x"]).pow(2).mean()
        loss_head = self.trainable["head"](h.detach()).pow(2).mean()
        if step + 1 in (toy.get("nan_steps") or []):
            loss_net = loss_net * float("nan")
        return StepOutput({"net": loss_net, "head": loss_head}, {"h_mean": float(h.detach().mean())})


def toy_config(**trainer):
    base = {
        "seed": 0,
        "resolution": 8,
        "optim": {"name": "adamw", "lr": 1e-2, "betas": [0.9, 0.99], "weight_decay": 0.01,
                  "schedule": "cosine", "warmup_steps": 2, "min_lr": 0.0},
        "logger": {"tracker": None},
        "trainer": {
            "max_steps": 6, "batch_size": 2, "grad_accum": 2, "global_batch": None, "mixed_precision": "no",
            "cpu": True, "num_workers": 0, "log_every": 1, "val_every": 100, "checkpoint_every": 2,
            "keep_checkpoints": 2, "val_images": 2, "resume": None, "max_grad_norm": 1.0,
            "find_unused_parameters": False, "ema": {"enabled": True, "decay": 0.9},
            "nonfinite_patience": 3, "max_bad_fraction": 0.5,
        },
    }
    cfg = OmegaConf.create(base)
    cfg.trainer = OmegaConf.merge(cfg.trainer, trainer)
    return cfg
