"""Assemble an :class:`AsukaInpaintPipeline` from the trained stages (or tiny random parts), save and load it.

``build_pipeline(cfg)`` reads the SD folder, the stage-1 MAE, the stage-2 alignment module and the optional stage-3
decoder from config; ``scripts/export_pipeline.py`` writes the result with ``save_pretrained``; ``load_pipeline``
reads such a folder back (``asuka.pipelines.loading``; ``model_index.json`` names the ``asuka`` classes, so it
round-trips).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import backbone_for, is_tiny
from asuka.models.backbones.flux import FluxFill
from asuka.models.mae_import import TINY_SEED, load_frozen_mae
from asuka.models.sd import build_inference_scheduler
from asuka.pipelines.loading import (check_compatible, freeze_pipeline, load_alignment_folder, load_decoder_folder,
                                     load_pipeline, model_block, override_or_path)
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError

log = logging.getLogger(__name__)


def _tiny_alignment(cfg: DictConfig, name: str = "alignment") -> AlignmentModule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + (name == "alignment_clip"))
        try:
            return AlignmentModule(**model_block(cfg, name)).eval()
        except TypeError as exc:
            raise ConfigError(f"model.{name}", str(exc)) from None


def build_pipeline(
    cfg: DictConfig,
    device: str | torch.device = "cpu",
    random_decoder: bool = False,
    use_pipeline_folder: bool = True,
) -> AsukaInpaintPipeline:
    """Pipeline from config.

    An exported folder (``pipeline``/``paths.pipeline``) is loaded as is when ``use_pipeline_folder``. Otherwise:
    SD from ``sd``/``paths.sd_inpaint``, MAE from ``mae``/``paths.mae``, alignment from
    ``alignment``/``paths.alignment``, decoder from ``decoder``/``paths.decoder`` (None: the VAE decodes). With
    ``model=tiny`` a missing MAE or alignment module is a small random one (fixed seed), and with
    ``random_decoder`` a missing decoder too (a tiny one built on the tiny VAE). Otherwise a missing MAE or
    alignment path is a ConfigError naming the key.
    """
    folder = override_or_path(cfg, "pipeline", "pipeline")
    if backbone_for(cfg.model).name == FluxFill.name:
        from asuka.pipelines.build_flux import build_flux_pipeline

        return build_flux_pipeline(cfg, device=device, random_decoder=random_decoder,
                                   folder=folder if use_pipeline_folder and is_given(folder) else None)
    if use_pipeline_folder and is_given(folder):
        return load_pipeline(folder, device=device)
    tiny = is_tiny(cfg)
    mae_path, align_path = override_or_path(cfg, "mae", "mae"), override_or_path(cfg, "alignment", "alignment")
    if not (is_given(mae_path) or tiny):
        raise ConfigError("paths.mae", "the pipeline needs the stage-1 MAE (a final/mae folder or a converted file)")
    if not (is_given(align_path) or tiny):
        raise ConfigError(
            "paths.alignment", "the pipeline needs the stage-2 alignment module (a final/alignment folder)"
        )
    mae = load_frozen_mae(cfg, mae_path)
    alignment = load_alignment_folder(align_path) if is_given(align_path) else _tiny_alignment(cfg)
    backbone = backbone_for(cfg.model)
    sd = backbone.load(cfg.model[backbone.config_key], override_or_path(cfg, backbone.config_key, backbone.paths_key))
    alignment_clip = None  # SDXL's pooled head: alignment_clip=, else stage 2's final/alignment_clip next to the other
    if "alignment_clip" in backbone.alignment_heads:
        clip_path = cfg.get("alignment_clip")
        if not is_given(clip_path) and is_given(align_path):
            clip_path = Path(os.path.expanduser(str(align_path))).parent / "alignment_clip"
        alignment_clip = (load_alignment_folder(clip_path) if is_given(clip_path)
                          else _tiny_alignment(cfg, "alignment_clip"))

    decoder_path = override_or_path(cfg, "decoder", "decoder")
    if is_given(decoder_path):
        decoder = load_decoder_folder(decoder_path)
    elif random_decoder and tiny:
        from asuka.models.decoder import build_decoder

        decoder_cfg = OmegaConf.create({**model_block(cfg, "decoder"), "source": "tiny", "seed": TINY_SEED})
        decoder = build_decoder(decoder_cfg, sd.vae).eval()
    else:
        decoder = None

    pipe = AsukaInpaintPipeline(
        vae=sd.vae,
        unet=sd.unet,
        scheduler=build_inference_scheduler(sd.scheduler.config),
        mae=mae,
        alignment=alignment,
        decoder=decoder,
        alignment_clip=alignment_clip,
    )
    check_compatible(pipe)
    return freeze_pipeline(pipe).to(device)


def export_pipeline(cfg: DictConfig) -> Path:
    """``scripts/export_pipeline.py``: build the pipeline from config and ``save_pretrained(cfg.out)``.

    With ``model=tiny`` every part not given is a tiny random one (the decoder included).
    """
    if not is_given(cfg.get("out")):
        raise ConfigError("out", "give the folder to write the pipeline to (out=DIR)")
    out = Path(os.path.expanduser(str(cfg.out)))
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    pipe = build_pipeline(cfg, device="cpu", random_decoder=is_tiny(cfg), use_pipeline_folder=False)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    parts = ", ".join(f"{n}={type(getattr(pipe, n)).__name__}" for n in ("mae", "alignment", "decoder"))
    print(f"wrote {out} ({parts})")
    return out
