"""Assemble :class:`AsukaFluxFillPipeline` from config: ASUKA-FLUX (released weights converted by
``scripts/convert_asuka.py``, or tiny random parts) and the FLUX.1-Fill-dev baseline (stored prompt, AE decode).

``paths.asuka_flux`` is the converted folder; its parts can be overridden one by one (``mae=``, ``alignment=``,
``alignment_clip=``, ``decoder=``, ``conditions=``). ``model=flux_tiny`` builds every missing part at random.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import backbone_for, is_tiny
from asuka.models.backbones.flux import GUIDANCE, FluxFill, load_flux_fill
from asuka.models.backbones.flux_released import converted_part, flux_conditions, use_part
from asuka.models.mae_import import TINY_SEED, load_frozen_mae
from asuka.pipelines.loading import (check_flux_compatible, freeze_pipeline, load_alignment_folder, load_decoder_folder,
                                     load_pipeline, model_block)
from asuka.pipelines.pipeline_asuka_flux import CONDITION_WEIGHT, AsukaFluxFillPipeline
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError

def _alignment(cfg: DictConfig, name: str, tiny: bool) -> AlignmentModule:
    path = converted_part(cfg, name)
    if use_part(path, tiny):
        return load_alignment_folder(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + (name == "alignment_clip"))
        try:
            return AlignmentModule(**model_block(cfg, name)).eval()
        except TypeError as exc:
            raise ConfigError(f"model.{name}", str(exc)) from None


def _decoder(cfg: DictConfig, vae: Any, tiny: bool, random_decoder: bool) -> Any:
    from asuka.models.decoder import build_decoder

    path = converted_part(cfg, "decoder")
    if use_part(path, tiny):
        return load_decoder_folder(path)
    if random_decoder and tiny:
        decoder_cfg = OmegaConf.create({**model_block(cfg, "decoder"), "source": "tiny", "seed": TINY_SEED})
        return build_decoder(decoder_cfg, vae).eval()
    return None


def build_flux_pipeline(cfg: DictConfig, device: str | torch.device = "cpu", random_decoder: bool = False,
                        baseline: bool = False, folder: Any = None) -> AsukaFluxFillPipeline:
    """ASUKA-FLUX (or, with ``baseline``, FLUX.1-Fill-dev with the stored prompt and its AE) from config, or the
    exported pipeline ``folder``; placed on ``device`` with ``model.flux.offload``."""
    offload = str(cfg.model.flux.get("offload", "none"))
    if folder is not None:
        return place(load_pipeline(folder, device="cpu", dtype=cfg.model.flux.get("dtype")), device, offload)
    tiny = is_tiny(cfg)
    if not tiny:  # every ASUKA part is found before the 12B transformer loads
        needed = ("conditions",) if baseline else ("mae", "alignment", "alignment_clip", "conditions")
        missing = [str(p) if p is not None else name for name, p in ((n, converted_part(cfg, n)) for n in needed)
                   if p is None or not p.exists()]
        if missing:
            raise ConfigError("paths.asuka_flux", f"missing {', '.join(missing)} (give the folder written by "
                                                  "scripts/convert_asuka.py)")
    flux_path = cfg.get("flux") if is_given(cfg.get("flux")) else OmegaConf.select(cfg, "paths.flux_fill")
    comps = load_flux_fill(cfg.model.flux, flux_path, device="cpu")
    shapes = FluxFill().condition_shapes(comps)
    parts: dict[str, Any] = {"mae": None, "alignment": None, "alignment_clip": None, "decoder": None}
    if not baseline:
        mae_path = converted_part(cfg, "mae")
        # load_frozen_mae reads the tiny flag from model.sd: give it a view with the FLUX backbone's flag
        view = OmegaConf.create({"model": {"mae": model_block(cfg, "mae"), "sd": {"source": "tiny" if tiny else "-"}},
                                 "paths": {"mae": None}})
        parts["mae"] = load_frozen_mae(view, str(mae_path) if use_part(mae_path, tiny) else None)
        parts["alignment"] = _alignment(cfg, "alignment", tiny)
        parts["alignment_clip"] = _alignment(cfg, "alignment_clip", tiny)
        parts["decoder"] = _decoder(cfg, comps.vae, tiny, random_decoder)
    pipe = AsukaFluxFillPipeline(transformer=comps.transformer, vae=comps.vae, scheduler=comps.scheduler,
                                 conditions=flux_conditions(cfg, "baseline" if baseline else "asuka", shapes, tiny),
                                 condition_weight=float(cfg.model.get("condition_weight", CONDITION_WEIGHT)),
                                 guidance=float(cfg.model.get("guidance", GUIDANCE)), **parts)
    check_flux_compatible(pipe)
    return place(freeze_pipeline(pipe), device, offload)


OFFLOAD = ("none", "model", "sequential")


def place(pipe: AsukaFluxFillPipeline, device: str | torch.device, offload: str = "none") -> AsukaFluxFillPipeline:
    """Move to ``device``; on a GPU, ``offload=model`` keeps each part on the CPU until it runs (a 24 GB card holds
    the bf16 transformer alone) and ``sequential`` streams the weights layer by layer (least memory, slowest)."""
    if offload not in OFFLOAD:
        raise ConfigError("model.flux.offload", f"unknown value '{offload}', expected one of {', '.join(OFFLOAD)}")
    if offload == "none" or torch.device(device).type != "cuda":
        return pipe.to(device)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    return pipe


def with_flux_model(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a FLUX model block: as is under ``model=flux_*``; else (an SD model, e.g. the demo's tiny one)
    ``configs/model/flux_tiny.yaml`` for tiny models and ``flux_fill.yaml`` otherwise (``method=asuka_flux``)."""
    if backbone_for(cfg.model).name == FluxFill.name:
        return cfg
    name = "flux_tiny" if is_tiny(cfg) else "flux_fill"
    out = cfg.copy()
    with open_dict(out):
        out.model = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / f"{name}.yaml")
    return out
