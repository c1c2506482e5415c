"""The frozen inpainting backbones ASUKA and LAR-Gen condition: SD-1.5 inpainting, FLUX.1-Fill-dev, SDXL inpainting.

``backbone_for(model_cfg)`` reads ``model.backbone`` (default ``sd15_inpaint``, the paper's model).
"""
from __future__ import annotations

from typing import Any

from asuka.models.backbones.base import Backbone, ConditionShapes
from asuka.models.backbones.flux import FluxFill
from asuka.models.backbones.sd15 import SD15Inpaint
from asuka.models.backbones.sdxl import SDXLInpaint
from asuka.utils.config import cfg_get
from asuka.utils.errors import ConfigError

BACKBONES: dict[str, type[Backbone]] = {cls.name: cls for cls in (SD15Inpaint, FluxFill, SDXLInpaint)}


def get_backbone(name: str) -> Backbone:
    """The backbone called ``name``; ConfigError naming ``model.backbone`` otherwise."""
    if str(name) not in BACKBONES:
        raise ConfigError("model.backbone", f"unknown backbone '{name}', expected one of {', '.join(BACKBONES)}")
    return BACKBONES[str(name)]()


def backbone_for(model_cfg: Any) -> Backbone:
    """The backbone of a ``model`` config block (``model.backbone``; SD-1.5 inpainting when absent)."""
    name = model_cfg.get("backbone", SD15Inpaint.name) if model_cfg is not None else SD15Inpaint.name
    return get_backbone(name)


def is_tiny(cfg: Any) -> bool:
    """``model=tiny|flux_tiny|sdxl_tiny`` (or ``experiment=demo``): the backbone's block says ``source: tiny``, so the parts
    that are not given are small random ones."""
    block = cfg.model.get(backbone_for(cfg.model).config_key)
    return str(cfg_get(block, "source", "pretrained")) == "tiny"


__all__ = ["BACKBONES", "Backbone", "ConditionShapes", "backbone_for", "get_backbone", "is_tiny"]
