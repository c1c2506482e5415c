"""What both ASUKA pipeline builders share (SD in ``build``, FLUX in ``build_flux``): reading the trained parts'
folders, the checks that the parts fit together, freezing, and loading an exported pipeline folder. Below both
builders, so neither imports the other."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.models.alignment import AlignmentModule
from asuka.models.frozen import resolve_dtype
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.utils.config import cfg_get, is_given
from asuka.utils.errors import AsukaError, ConfigError


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


def check_flux_compatible(pipe: AsukaFluxFillPipeline) -> None:
    """MAE width -> both heads; heads -> the transformer's token and pooled widths; stored conditions alike."""
    cfg = pipe.transformer.config
    want = {"alignment": int(cfg.joint_attention_dim), "alignment_clip": int(cfg.pooled_projection_dim)}
    if int(pipe.conditions.config.txt_dim) != want["alignment"] or int(pipe.conditions.config.vec_dim) != \
            want["alignment_clip"]:
        raise ConfigError("paths.asuka_flux", f"condition tensors are {pipe.conditions.config.txt_dim}/"
                          f"{pipe.conditions.config.vec_dim} wide; the transformer takes {want['alignment']}/"
                          f"{want['alignment_clip']}")
    if not pipe.uses_prior:
        return
    for name, width in want.items():
        head = getattr(pipe, name)
        if head is None:
            raise ConfigError(f"model.{name}", "ASUKA-FLUX needs both alignment heads")
        if int(head.config.in_dim) != int(pipe.mae.config.decoder_embed_dim):
            raise ConfigError(f"model.{name}.in_dim", f"is {head.config.in_dim} but the MAE prior has width "
                              f"{pipe.mae.config.decoder_embed_dim}")
        if int(head.config.out_dim) != width:
            raise ConfigError(f"model.{name}.out_dim", f"is {head.config.out_dim} but the transformer takes {width}")
    if pipe.decoder is not None and int(pipe.decoder.config.latent_channels) != int(pipe.vae.config.latent_channels):
        raise ConfigError("model.decoder", "the decoder's latent channels differ from the FLUX AE's")


def read_model_index(folder: Path) -> dict:
    """``model_index.json`` of an exported pipeline as a dict; a torn or foreign file is one line naming it."""
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AsukaError(f"{path}: cannot be read ({str(exc).splitlines()[0]}); export the pipeline again") from None
    if not isinstance(index, dict):
        raise AsukaError(f"{path}: expected a JSON object (pipeline class and components), got a "
                         f"{type(index).__name__}")
    return index


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
    classes = {cls.__name__: cls for cls in (AsukaInpaintPipeline, AsukaFluxFillPipeline)}
    name = read_model_index(folder).get("_class_name")
    if name == "LarGenInpaintPipeline":
        raise AsukaError(f"{folder}: a LAR-Gen pipeline (model_index.json: {name}); run it with method=largen "
                         "(and prompt=/subject=)")
    cls = classes.get(name, AsukaInpaintPipeline)
    # the backbone and its VAE are read straight into ``dtype`` (no float32 copy of a 12B transformer)
    dt = None if dtype is None else resolve_dtype(dtype, "dtype")
    kwargs = {} if dt is None else {"torch_dtype": {"unet": dt, "transformer": dt, "vae": dt, "default": torch.float32}}
    try:
        pipe = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, RuntimeError, AttributeError, ImportError) as exc:
        raise AsukaError(f"{folder}: cannot load the pipeline ({str(exc).splitlines()[0]})") from None
    (check_flux_compatible if cls is AsukaFluxFillPipeline else check_compatible)(pipe)
    return freeze_pipeline(pipe).to(device)
