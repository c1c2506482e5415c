"""The "null" conditions a backbone's aligned prior is blended with (FLUX: the released ``txt_256``/``vec`` pair),
and condition dropout to them, for the stages that train against or sample from the frozen backbone."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from asuka.models.backbones import Backbone, is_tiny
from asuka.models.backbones.flux_released import flux_conditions
from asuka.utils.errors import ConfigError

NULL_KINDS = ("released", "zeros")


def check_null_conditions(cfg: DictConfig, backbone: Backbone, kind: str, key: str) -> None:
    """Before any model loads: a known ``kind``, and for ``released`` with real weights, ``paths.asuka_flux``."""
    if not backbone.has_null_conditions:
        return
    if str(kind) not in NULL_KINDS:
        raise ConfigError(key, f"unknown value '{kind}', expected one of {', '.join(NULL_KINDS)}")
    if str(kind) == "released" and not is_tiny(cfg) and not cfg.paths.get("asuka_flux"):
        raise ConfigError("paths.asuka_flux", f"{key}=released needs the converted released folder (its "
                                              "conditions/), or set it to zeros")


def load_null_conditions(cfg: DictConfig, backbone: Backbone, components: Any, kind: str,
                         key: str) -> tuple[torch.Tensor, ...] | None:
    """``(txt [1,L,D], vec [1,P])`` for a backbone with null conditions (None otherwise). ``released``: the
    converted released tensors (``paths.asuka_flux``/conditions; tiny random ones with ``model=flux_tiny``, the same
    the pipeline builds); ``zeros``: zeros with the prior's token count. ``key`` names the config key."""
    if not backbone.has_null_conditions:
        return None
    check_null_conditions(cfg, backbone, kind, key)
    shapes = backbone.condition_shapes(components)
    if str(kind) == "zeros":
        tokens = (int(cfg.model.mae.img_size) // int(cfg.model.mae.patch_size)) ** 2
        return torch.zeros(1, tokens, shapes.token_dim), torch.zeros(1, shapes.pooled_dim)
    null = flux_conditions(cfg, "asuka", shapes, is_tiny(cfg))
    return null.txt.detach().clone(), null.vec.detach().clone()


def blend_with_null(conditions: tuple[torch.Tensor, ...], null: tuple[torch.Tensor, ...] | None,
                    dropout: float, weight: float) -> tuple[torch.Tensor, ...]:
    """Per sample, with probability ``dropout`` the null conditions replace the aligned ones (one torch draw of
    ``[B]``); then ``null + weight * (c - null)`` (the pipeline's blend; weight 1 = as is). No null: unchanged."""
    if null is None:
        return conditions
    b = conditions[0].shape[0]
    drop = torch.rand(b, device=conditions[0].device) < float(dropout)
    out = []
    for c, n in zip(conditions, null):
        n = n.to(device=c.device, dtype=c.dtype).expand_as(c)
        c = torch.where(drop.reshape(-1, *([1] * (c.ndim - 1))), n, c)
        out.append(c if float(weight) == 1.0 else n + float(weight) * (c - n))
    return tuple(out)
