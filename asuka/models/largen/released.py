"""``scripts/convert_largen.py``: the released LAR-Gen checkpoint (scepter ``largen_ckpt_s22k.pth``, an SDXL
``LargenUNetXL``) -> ``out/unet`` (diffusers UNet2DConditionModel) + ``out/assign`` (:class:`AssignAdapter`) +
``out/conversion_report.json``; run them with ``method=largen model=sdxl largen.unet=OUT/unet largen.assign=OUT/assign``.

Layout of the release (scepter ``ldm_xl.py``, ``unet_utils.py``, ``embedder.py``): the UNet under ``model.`` (or
``model.diffusion_model.``) in SGM names, each cross-attention ``attn2`` holding its ``to_k_ip``/``to_v_ip``; the
IP-Adapter-Plus resampler at ``conditioner.embedders.<i>.image_proj_model.*`` (IP-Adapter's ``Resampler`` names).
Dropped, and listed in the report: the frozen VAE and text encoders (``first_stage_model.*``, other
``conditioner.*``; taken from ``paths.sdxl_inpaint``) and the embedder's ``patch_projector`` (the RefineNet's detail
tokens; the released yaml sets ``USE_REFINE: False``). SGM -> diffusers names: diffusers' own
``convert_ldm_unet_checkpoint``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from omegaconf import DictConfig, OmegaConf

from asuka.models.backbones import is_tiny
from asuka.models.backbones.sdxl import SDXL_SPEC, build_tiny_sdxl
from asuka.models.convert.strict import build_and_load
from asuka.models.largen.assign import AssignAdapter
from asuka.utils.config import cfg_get
from asuka.utils.errors import AsukaError, ConfigError
from asuka.utils.safe_load import load_state_dict
from asuka.utils.weights import file_sha256

_SGM = "model.diffusion_model."  # the prefix convert_ldm_unet_checkpoint reads
_RESAMPLER = re.compile(r"^conditioner\.embedders\.\d+\.image_proj_model\.(.+)$")
_IP = re.compile(r"^(.+\.attn2)\.(to_k_ip|to_v_ip)\.weight$")
_DROPPED = ("first_stage_model.", "conditioner.")


def split_released(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict, list[str]]:
    """``(UNet keys with the SGM prefix, resampler keys, dropped keys)``; an unknown key is refused."""
    unet, resampler, dropped = {}, {}, []
    for key, value in state.items():
        if (match := _RESAMPLER.match(key)) is not None:
            resampler[match.group(1)] = value
        elif key.startswith(_SGM):
            unet[key] = value
        elif key.startswith("model."):  # scepter's own prefix (its loader maps model.diffusion_model. to it)
            unet[_SGM + key[len("model."):]] = value
        elif key.startswith(_DROPPED):
            dropped.append(key)
        else:
            raise AsukaError(f"{source}: unknown key '{key}' (a LAR-Gen checkpoint has model.*, conditioner.*, "
                             "first_stage_model.*)")
    if not unet or not resampler:
        raise AsukaError(f"{source}: not a LAR-Gen checkpoint (no {'UNet' if not unet else 'image_proj_model'} "
                         "weights)")
    return unet, resampler, dropped


def convert_largen_state(state: dict[str, torch.Tensor], unet_config: dict[str, Any],
                         source: str) -> tuple[UNet2DConditionModel, AssignAdapter, dict[str, Any]]:
    """The UNet (strict: every key used, every shape equal) and the Assign adapter of a released state dict."""
    sgm, resampler, dropped = split_released(state, source)
    try:
        converted = convert_ldm_unet_checkpoint(sgm, dict(unet_config))
    except KeyError as exc:  # a key diffusers' converter requires (e.g. the text_time embedding)
        raise AsukaError(f"{source}: missing UNet key model.{str(exc).strip(chr(39))}") from None
    if len(converted) != len(sgm):
        raise AsukaError(f"{source}: {len(sgm) - len(converted)} UNet keys have no diffusers name (not an SDXL "
                         "inpainting UNet of model.sdxl's config?)")
    ip = {key: converted.pop(key) for key in list(converted) if _IP.match(key)}
    unet = build_and_load(lambda: UNet2DConditionModel.from_config(unet_config), converted, source,
                          "SDXL LAR-Gen UNet")
    layers = {name: i for name, i in ((n.removesuffix(".processor"), i)
                                      for i, n in enumerate(unet.attn_processors)) if name.endswith("attn2")}
    per_index: dict[str, torch.Tensor] = {}
    for key, value in ip.items():
        name, kind = _IP.match(key).groups()
        if name not in layers:
            raise AsukaError(f"{source}: '{key}' names no cross-attention layer of the UNet")
        per_index[f"{layers[name]}.{kind}.weight"] = value
    if len(per_index) != 2 * len(layers):
        raise AsukaError(f"{source}: to_k_ip/to_v_ip for {len(per_index) // 2} of {len(layers)} cross-attention layers")
    assign = AssignAdapter.from_ip_adapter_state({"image_proj": resampler, "ip_adapter": per_index}, unet,
                                                 source=source)
    report = {"renamed": len(sgm), "ip_layers": len(layers), "resampler_keys": len(resampler), "dropped": dropped}
    return unet, assign, report


def _unet_config(cfg: DictConfig) -> dict[str, Any]:
    """The SDXL inpainting UNet config of ``model.sdxl`` (tiny: the tiny one; else ``paths.sdxl_inpaint``'s unet/)."""
    if is_tiny(cfg):
        return dict(build_tiny_sdxl(int(cfg_get(cfg.model.sdxl, "seed", 0))).unet.config)
    path = cfg_get(cfg.get("paths"), "sdxl_inpaint")
    try:
        return dict(UNet2DConditionModel.load_config(str(path), subfolder="unet"))
    except (OSError, ValueError) as exc:
        raise ConfigError(SDXL_SPEC.paths_key, f"cannot read unet/config.json of {path} "
                          f"({str(exc).splitlines()[0]})") from None


def convert_largen(cfg: DictConfig) -> Path:
    """``src=FILE out=DIR``: write ``out/unet``, ``out/assign`` and ``out/conversion_report.json``."""
    for key in ("src", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ConfigError(key, f"required: pass {key}=...")
    src, out = Path(str(cfg.src)).expanduser(), Path(str(cfg.out)).expanduser()
    if not src.is_file():
        raise ConfigError("src", f"{src} is not a file (the released largen_ckpt_s22k.pth)")
    config = _unet_config(cfg)
    unet, assign, report = convert_largen_state(load_state_dict(src), config, str(src))
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(out / "unet"))
    assign.save_pretrained(str(out / "assign"))
    report_path = out / "conversion_report.json"
    report_path.write_text(json.dumps({"src": str(src), "sha256": file_sha256(src), "wrote": ["unet", "assign"],
                                       **report}, indent=1))
    print(f"wrote {out / 'unet'}, {out / 'assign'}, {report_path}")
    return report_path
