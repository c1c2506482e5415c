"""Stage-2 training benchmark on FLUX.1-Fill (``scripts/benchmark.py task=train_align model=flux_tiny|flux_fill``).

The real :class:`~asuka.training.align.AlignStage` inside the real engine, timed and FLOP-counted by the SD
benchmark's own ``_train_task`` (one optimizer update: MAE prior, AE encodes, both heads, the frozen transformer
forward and backward to the conditions, clipping, AdamW). ``flux_tiny`` uses the tiny test parts; ``flux_fill``
builds random weights at the released sizes (:func:`asuka.benchmark.flux.build_flux`, directly on the device in the
stage's dtype: the 11.9B transformer needs a GPU) with a random MAE at ``model/flux_fill.yaml`` sizes and zero null
conditions, so no released file is read.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator
from unittest import mock

import torch
from omegaconf import DictConfig, open_dict

from asuka.benchmark import models as bm
from asuka.benchmark.flux import build_flux
from asuka.utils.errors import ConfigError


@contextlib.contextmanager
def _random_flux_fill(env: Any) -> Iterator[None]:
    """The stage's FLUX.1-Fill and MAE loaders replaced by random weights of the released architecture."""
    from asuka.models.frozen import resolve_dtype

    def load_flux(block: Any, path: Any, device: Any = "cpu", dtype: Any = None, parts: Any = None) -> Any:
        dt = resolve_dtype(dtype if dtype is not None else block.get("dtype", "float32"), "model.flux.dtype")
        return build_flux("flux_fill", torch.device(device), dt, env.seed)

    def load_mae(cfg: Any, path: Any = None) -> Any:
        return bm.build_mae(bm.model_config("flux_fill"), env.seed).requires_grad_(False).eval()

    with mock.patch("asuka.models.backbones.flux.load_flux_fill", load_flux), \
            mock.patch("asuka.training.align.load_frozen_mae", load_mae):
        yield


def train_align_flux(cfg: DictConfig, env: Any) -> dict[str, Any]:
    """FLOPs per sample and step time of stage 2 on FLUX (``size``: a multiple of 16; default 512, the paper's)."""
    from asuka.benchmark.training import train_task

    if env.size % 16:
        raise ConfigError("size", f"FLUX needs a multiple of 16, got {env.size}")
    if env.model == "flux_tiny":
        return train_task(cfg, env)
    if env.device.type != "cuda":
        raise ConfigError("device", "model=flux_fill trains against the 11.9B transformer: it needs a GPU "
                                    "(use model=flux_tiny on a CPU)")
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.train = {**(cfg.get("train") or {}),
                     "stage_overrides": [*((cfg.get("train") or {}).get("stage_overrides") or []),
                                         "align.null_conditions=zeros"]}
    with _random_flux_fill(env):
        return train_task(cfg, env)
