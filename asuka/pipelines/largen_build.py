"""Assemble LAR-Gen parts from config: the SD-1.5 or SDXL (``model=sdxl|sdxl_tiny``, the released model) inpainting
backbone, CLIP text and image encoders, the Assign
adapter, the RefineNet and an optional ASUKA decoder; build, save, load and run :class:`LarGenInpaintPipeline`.

Config: ``largen.*`` names weights (``unet``/``assign``/``refine``: stage folders, ``ip_adapter``: an h94 file,
``image_encoder``: folder or hub id, ``pipeline``: an exported folder); ``model.largen`` holds the sizes. With
``model=tiny`` every part not given is a small random one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

from asuka.models.backbones import backbone_for, is_tiny
from asuka.models.backbones.sdxl import (SDXL_SUBFOLDERS, SDXL_TEXT_PARTS, SDXLComponents, SDXLInpaint,
                                         load_sdxl_inpaint)
from asuka.models.largen.assign import AssignAdapter
from asuka.models.largen.clip_image import build_image_encoder
from asuka.models.largen.outpaint import check_outpaint
from asuka.models.largen.refine import RefineNet
from asuka.models.mae_import import TINY_SEED
from asuka.models.sd import SDComponents, build_inference_scheduler, load_sd_inpaint
from asuka.pipelines.baselines import load_text_parts, tiny_text_encoder
from asuka.pipelines.loading import load_decoder_folder, override_or_path, read_model_index
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline
from asuka.utils.config import cfg_get, is_given
from asuka.utils.errors import AsukaError, ConfigError


@dataclass
class LarGenParts:
    sd: SDComponents
    tokenizer: CLIPTokenizer | None
    text_encoder: CLIPTextModel
    image_encoder: CLIPVisionModelWithProjection
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's second encoder and tokenizer
    tokenizer_2: CLIPTokenizer | None = None


def _folder(cfg: DictConfig, key: str, cls: type, what: str) -> Any:
    path = Path(os.path.expanduser(str(cfg.largen[key])))
    if not (path / "config.json").is_file():
        raise AsukaError(f"{path}: not a {what} folder (config.json + safetensors, largen.{key})")
    try:
        return cls.from_pretrained(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise AsukaError(f"{path}: cannot load the {what} ({str(exc).splitlines()[0]})") from None


def load_parts(cfg: DictConfig, device: str | torch.device = "cpu", train_unet: bool = False) -> LarGenParts:
    """Backbone (UNet replaced by ``largen.unet`` when given), frozen text and image encoders."""
    if isinstance(backbone_for(cfg.model), SDXLInpaint):
        sd = load_sdxl_inpaint(cfg.model.sdxl, override_or_path(cfg, "sdxl", "sdxl_inpaint"), device, torch.float32,
                               parts=SDXL_SUBFOLDERS + SDXL_TEXT_PARTS)
        sd.unet.requires_grad_(train_unet).train(train_unet)
    else:
        sd = load_sd_inpaint(cfg.model.sd, override_or_path(cfg, "sd", "sd_inpaint"), device, torch.float32, train_unet=train_unet)
    if is_given(cfg.largen.get("unet")):
        unet = _folder(cfg, "unet", UNet2DConditionModel, "LAR-Gen UNet").to(device)
        sd.unet = unet.requires_grad_(train_unet).train(train_unet)
    image_encoder = build_image_encoder(cfg.model.largen.image_encoder, cfg.largen.get("image_encoder"))
    if isinstance(sd, SDXLComponents):
        return LarGenParts(sd, sd.tokenizer, sd.text_encoder, image_encoder.to(device), sd.text_encoder_2,
                           sd.tokenizer_2)
    if is_tiny(cfg):
        tokenizer = None
        text_encoder = tiny_text_encoder(int(cfg_get(cfg.model.sd, "seed", 0)), int(sd.unet.config.cross_attention_dim))
    else:
        tokenizer, text_encoder = load_text_parts(os.path.expanduser(str(override_or_path(cfg, "sd", "sd_inpaint"))), torch.float32)
    return LarGenParts(sd, tokenizer, text_encoder.to(device), image_encoder.to(device))


def build_assign(cfg: DictConfig, unet: UNet2DConditionModel) -> AssignAdapter:
    """``largen.assign`` (a stage folder), else ``largen.ip_adapter`` (an h94 file), else new from ``model.largen``."""
    if is_given(cfg.largen.get("assign")):
        return _folder(cfg, "assign", AssignAdapter, "Assign adapter").to(unet.device)
    if is_given(cfg.largen.get("ip_adapter")):
        return AssignAdapter.from_ip_adapter_file(cfg.largen.ip_adapter, unet, int(cfg.model.largen.assign.dim_head))
    sizes = OmegaConf.to_container(cfg.model.largen.assign, resolve=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", TINY_SEED)))
        return AssignAdapter.from_unet(unet, **sizes)


def build_refine(cfg: DictConfig, unet: UNet2DConditionModel, required: bool = False) -> RefineNet | None:
    """``largen.refine`` (a stage-B folder); a new one from the UNet when ``required`` or with tiny SD-1.5 models
    (the released SDXL model has none: its yaml sets USE_REFINE False)."""
    if is_given(cfg.largen.get("refine")):
        return _folder(cfg, "refine", RefineNet, "RefineNet").to(unet.device)
    if required or (is_tiny(cfg) and unet.config.addition_embed_type is None):
        return RefineNet.from_unet(unet, int(cfg.model.largen.assign.image_embed_dim))
    return None


def inference_scheduler(scheduler_config: Any) -> DDIMScheduler:
    """DDIM on the backbone's schedule with trailing timesteps (released LAR-Gen)."""
    return DDIMScheduler.from_config(build_inference_scheduler(scheduler_config).config, timestep_spacing="trailing")


def build_largen_pipeline(cfg: DictConfig, device: str | torch.device = "cpu") -> LarGenInpaintPipeline:
    """An exported folder (``pipeline=`` / ``paths.pipeline=``, as for ASUKA; ``largen.pipeline=`` is an alias) as
    is, else the pipeline assembled from the parts."""
    folder = cfg.largen.get("pipeline") if is_given(cfg.largen.get("pipeline")) else \
        override_or_path(cfg, "pipeline", "pipeline")
    if is_given(folder):
        return load_largen_pipeline(folder, device)
    if not is_tiny(cfg) and not is_given(cfg.largen.get("unet")):
        raise ConfigError("largen.unet", "LAR-Gen needs its trained UNet (stage A final/unet)")
    parts = load_parts(cfg)
    decoder = load_decoder_folder(cfg.largen.decoder) if is_given(cfg.largen.get("decoder")) else None
    pipe = LarGenInpaintPipeline(
        vae=parts.sd.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.sd.unet,
        assign=build_assign(cfg, parts.sd.unet), image_encoder=parts.image_encoder,
        scheduler=inference_scheduler(parts.sd.scheduler.config), refine=build_refine(cfg, parts.sd.unet),
        decoder=decoder, text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2,
    )
    return _frozen(pipe).to(device)


def _frozen(pipe: LarGenInpaintPipeline) -> LarGenInpaintPipeline:
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    return pipe


def load_largen_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu") -> LarGenInpaintPipeline:
    """A folder written by ``save_pretrained`` (``scripts/export_pipeline.py method=largen``)."""
    folder = Path(os.path.expanduser(str(path)))
    if not (folder / "model_index.json").is_file():
        raise AsukaError(f"{folder}: not an exported LAR-Gen pipeline (no model_index.json)")
    name = read_model_index(folder).get("_class_name")
    if name != LarGenInpaintPipeline.__name__:
        raise AsukaError(f"{folder}: not a LAR-Gen pipeline (model_index.json: {name}); run it without "
                         "method=largen")
    try:
        pipe = LarGenInpaintPipeline.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError, AttributeError, ImportError) as exc:
        raise AsukaError(f"{folder}: cannot load the LAR-Gen pipeline ({str(exc).splitlines()[0]})") from None
    return _frozen(pipe).to(device)


def export_largen_pipeline(cfg: DictConfig) -> Path:
    """``scripts/export_pipeline.py method=largen out=DIR``."""
    if not is_given(cfg.get("out")):
        raise ConfigError("out", "give the folder to write the pipeline to (out=DIR)")
    out = Path(os.path.expanduser(str(cfg.out)))
    pipe = build_largen_pipeline(cfg)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out))
    print(f"wrote {out} (refine={type(pipe.refine).__name__}, decoder={type(pipe.decoder).__name__})")
    return out


def _outpaint_settings(cfg: DictConfig) -> dict[str, Any]:
    """The released outpainting recipe's arguments from ``outpaint=DIRECTION`` and ``largen.outpaint_*``, checked
    before any model loads (text only, as released)."""
    if is_given(cfg.get("subject")):
        raise ConfigError("subject", "text-guided outpainting takes a prompt, not a subject (released task set)")
    if not is_given(cfg.get("prompt")):
        raise ConfigError("prompt", "text-guided outpainting needs prompt=TEXT")
    check_outpaint(float(cfg.largen.outpaint_ratio), str(cfg.outpaint), ("largen.outpaint_ratio", "outpaint"))
    settings: dict[str, Any] = {"ratio": float(cfg.largen.outpaint_ratio), "direction": str(cfg.outpaint),
                                "paste_back": cfg.get("paste_back") is not False}
    for side in ("height", "width"):  # the range is checked by the config schema
        value = cfg.largen.get(f"outpaint_{side}")
        settings[side] = int(value) if is_given(value) else None
    return settings


def inpaint_largen(cfg: DictConfig) -> Path:
    """``scripts/inpaint.py method=largen image=... mask=... out=... prompt=... subject=... [subject_mask=...]``, or
    ``outpaint=DIRECTION`` instead of ``mask=`` (text-guided outpainting, the released recipe)."""
    import numpy as np
    from PIL import Image

    from asuka.data.images import load_image, load_mask

    as_mask = lambda path: Image.fromarray(load_mask(path).astype(np.uint8) * 255)  # noqa: E731  (>= 128 = hole)

    outpaint = cfg.get("outpaint")
    for key in ("image", "out") if is_given(outpaint) else ("image", "mask_file", "out"):
        if not is_given(cfg.get(key)):
            raise ConfigError("mask" if key == "mask_file" else key, "missing (LAR-Gen needs image=, mask= and out=;"
                                                                     " outpaint=DIRECTION instead of mask=)")
    if not is_given(cfg.get("prompt")) and not is_given(cfg.get("subject")):
        raise ConfigError("prompt", "give prompt=TEXT, subject=IMAGE, or both")
    sampling = {"guidance_scale": float(cfg.largen.guidance_scale), "num_inference_steps": int(cfg.steps),
                "guidance_rescale": float(cfg.largen.guidance_rescale)}
    if is_given(outpaint):
        sampling.update(_outpaint_settings(cfg))
    image = load_image(cfg.image)
    mask = None if is_given(outpaint) else as_mask(cfg.mask_file)
    subject = load_image(cfg.subject) if is_given(cfg.get("subject")) else None
    subject_mask = as_mask(cfg.subject_mask) if is_given(cfg.get("subject_mask")) else None
    device = "cpu" if cfg.trainer.cpu or not torch.cuda.is_available() else "cuda"
    pipe = build_largen_pipeline(cfg, device)
    generator = torch.Generator(device="cpu").manual_seed(int(cfg.seed))
    if is_given(outpaint):
        result = pipe.outpaint(image, str(cfg.prompt), generator=generator, **sampling).images[0]
    else:
        result = pipe(image, mask, prompt=str(cfg.get("prompt") or ""), subject_image=subject,
                      subject_mask=subject_mask, image_scale=float(cfg.largen.image_scale), generator=generator,
                      **sampling).images[0]
    out = Path(os.path.expanduser(str(cfg.out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"wrote {out}")
    return out
