"""Assemble :class:`AsukaFluxFillPipeline` from config: ASUKA-FLUX (released weights converted by
``scripts/convert_asuka.py``, or tiny random parts) and the FLUX.1-Fill-dev baseline (stored prompt, AE decode).

``paths.asuka_flux`` is the converted folder; its parts can be overridden one by one (``mae=``, ``alignment=``,
``alignment_clip=``, ``decoder=``, ``conditions=``). ``model=flux_tiny`` builds every missing part at random.
``recipe=official|ours`` (top-level key, default ours) selects the released script's recipe
(:mod:`asuka.pipelines.pipeline_asuka_flux`), including its fill encoder: the ``encoder.*`` of ``asuka_decoder.ckpt``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import backbone_for, is_tiny
from asuka.models.backbones.flux import GUIDANCE, FluxFill, load_flux_fill
from asuka.models.mae_import import TINY_SEED, load_frozen_mae
from asuka.models.backbones.flux_released import converted_part, flux_conditions, use_part
from asuka.pipelines.loading import (check_flux_compatible, freeze_pipeline, load_alignment_folder, load_decoder_folder,
                                     load_pipeline, model_block)
from asuka.pipelines.pipeline_asuka_flux import CONDITION_WEIGHT, AsukaFluxFillPipeline, check_recipe
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
    exported pipeline ``folder``; placed on ``device`` with ``model.flux.offload``, under ``cfg.recipe``."""
    offload = str(cfg.model.flux.get("offload", "none"))
    recipe = check_recipe(cfg.get("recipe") or "ours")
    if folder is not None:
        pipe = load_pipeline(folder, device="cpu", dtype=cfg.model.flux.get("dtype"))
        return place(with_recipe(pipe, recipe), device, offload)
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
    return place(freeze_pipeline(with_recipe(pipe, recipe)), device, offload)


def with_recipe(pipe: AsukaFluxFillPipeline, recipe: str) -> AsukaFluxFillPipeline:
    """``pipe`` under ``recipe``. ``official`` with an ASUKA decoder also encodes the fill with the decoder's
    ``encoder`` (the release's: test_asuka_flux.py loads ``encoder.*`` of asuka_decoder.ckpt over the FLUX AE). A
    pipeline saved under ``official`` (bf16 prior, replaced encoder) cannot go back to ``ours``."""
    if recipe == pipe.config.recipe:
        return pipe
    if pipe.config.recipe == "official":
        raise ConfigError("recipe", "this pipeline was saved with recipe=official (bf16 MAE and heads, the "
                                    "release's encoder); rebuild it from the converted folder for recipe=ours")
    if pipe.decoder is not None:
        use_release_encoder(pipe.vae, pipe.decoder)
    return AsukaFluxFillPipeline(**pipe.components, condition_weight=pipe.config.condition_weight,
                                 guidance=pipe.config.guidance, recipe=recipe)


def use_release_encoder(vae: Any, decoder: Any) -> None:
    """Load the ASUKA decoder's AE encoder (the converted ``encoder.*`` of asuka_decoder.ckpt) into ``vae``."""
    theirs = decoder.encoder.state_dict()
    ours = vae.encoder.state_dict()
    bad = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    if bad or len(theirs) != len(ours):
        raise ConfigError("model.decoder", f"the decoder's encoder does not fit the FLUX AE encoder ({len(bad)} "
                                           f"keys differ, e.g. {bad[:1]})")
    vae.encoder.load_state_dict({k: v.to(ours[k].dtype) for k, v in theirs.items()})


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
