"""Assemble an :class:`AsukaInpaintPipeline` from the trained stages (or tiny random parts), save and load it.

``build_pipeline(cfg)`` reads the SD folder, the stage-1 MAE, the stage-2 alignment module and the optional stage-3
decoder from config; ``scripts/export_pipeline.py`` writes the result with ``save_pretrained``; ``load_pipeline``
reads such a folder back (``model_index.json`` names the ``asuka`` classes, so it round-trips).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import backbone_for, is_tiny
from asuka.models.backbones.flux import FluxFill
from asuka.models.mae_import import TINY_SEED, load_frozen_mae
from asuka.models.frozen import resolve_dtype
from asuka.models.sd import build_inference_scheduler
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.utils.config import cfg_get, is_given
from asuka.utils.errors import AsukaError, ConfigError

log = logging.getLogger(__name__)


def override_or_path(cfg: DictConfig, key: str, paths_key: str) -> Any:
    """A top-level override (``mae=...``) when the config has one, else ``paths.<paths_key>``."""
    if key in cfg and is_given(cfg.get(key)):
        return cfg.get(key)
    return cfg_get(cfg.get("paths"), paths_key)


def model_block(cfg: DictConfig, name: str) -> dict:
    block = cfg.model.get(name)
    return dict(OmegaConf.to_container(block, resolve=True)) if isinstance(block, DictConfig) else dict(block or {})


def load_alignment_folder(path: Any) -> AlignmentModule:
    folder = Path(os.path.expanduser(str(path)))
    if not (folder / "config.json").is_file():
        raise AsukaError(f"{folder}: not an alignment-module folder (expected config.json + safetensors from stage 2)")
    try:
        return AlignmentModule.from_pretrained(str(folder)).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise AsukaError(f"{folder}: cannot load the alignment module ({str(exc).splitlines()[0]})") from None


def _tiny_alignment(cfg: DictConfig, name: str = "alignment") -> AlignmentModule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + (name == "alignment_clip"))
        try:
            return AlignmentModule(**model_block(cfg, name)).eval()
        except TypeError as exc:
            raise ConfigError(f"model.{name}", str(exc)) from None


def load_decoder_folder(path: Any):
    from asuka.models.decoder import AsukaDecoder

    folder = Path(os.path.expanduser(str(path)))
    if not (folder / "config.json").is_file():
        raise AsukaError(f"{folder}: not a decoder folder (expected config.json + safetensors from stage 3)")
    try:
        return AsukaDecoder.from_pretrained(str(folder)).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise AsukaError(f"{folder}: cannot load the decoder ({str(exc).splitlines()[0]})") from None


def check_compatible(pipe: AsukaInpaintPipeline) -> None:
    """The parts must fit together: MAE width -> alignment -> UNet cross-attention; decoder latents = VAE latents."""
    mae_dim = int(pipe.mae.config.decoder_embed_dim)
    if int(pipe.alignment.config.in_dim) != mae_dim:
        raise ConfigError(
            "model.alignment.in_dim", f"is {pipe.alignment.config.in_dim} but the MAE's prior has width {mae_dim}"
        )
    cross = int(pipe.unet.config.cross_attention_dim)
    if int(pipe.alignment.config.out_dim) != cross:
        raise ConfigError(
            "model.alignment.out_dim",
            f"is {pipe.alignment.config.out_dim} but the UNet's cross-attention width is {cross}",
        )
    pooled = getattr(pipe, "alignment_clip", None)
    if pooled is not None and int(pooled.config.in_dim) != mae_dim:
        raise ConfigError("model.alignment_clip.in_dim",
                          f"is {pooled.config.in_dim} but the MAE's prior has width {mae_dim}")
    if pipe.decoder is not None and int(pipe.decoder.config.latent_channels) != int(pipe.vae.config.latent_channels):
        raise ConfigError("model.decoder", "the decoder's latent channels differ from the SD VAE's")


def freeze_pipeline(pipe: Any) -> Any:
    """Every model component of an ASUKA pipeline (SD or FLUX) frozen and in eval mode."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
    return pipe


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


def load_pipeline(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> Any:
    """Read a folder written by ``save_pretrained`` (``scripts/export_pipeline.py``); frozen, eval mode.

    ``dtype`` (e.g. ``"float16"`` on a GPU) applies to the UNet (or FLUX transformer) and VAE; the MAE and
    alignment stay float32. ``model_index.json`` says which pipeline class it is (ASUKA-SD or ASUKA-FLUX).
    """
    folder = Path(os.path.expanduser(str(path)))
    if not (folder / "model_index.json").is_file():
        raise AsukaError(
            f"{folder}: not an exported ASUKA pipeline (no model_index.json; see scripts/export_pipeline.py)"
        )
    from asuka.pipelines.build_flux import check_flux_compatible
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline

    classes = {cls.__name__: cls for cls in (AsukaInpaintPipeline, AsukaFluxFillPipeline)}
    cls = classes.get(json.loads((folder / "model_index.json").read_text()).get("_class_name"), AsukaInpaintPipeline)
    # the backbone and its VAE are read straight into ``dtype`` (no float32 copy of a 12B transformer)
    dt = None if dtype is None else resolve_dtype(dtype, "dtype")
    kwargs = {} if dt is None else {"torch_dtype": {"unet": dt, "transformer": dt, "vae": dt, "default": torch.float32}}
    try:
        pipe = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, AttributeError, ImportError) as exc:
        raise AsukaError(f"{folder}: cannot load the pipeline ({str(exc).splitlines()[0]})") from None
    (check_flux_compatible if cls is AsukaFluxFillPipeline else check_compatible)(pipe)
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
