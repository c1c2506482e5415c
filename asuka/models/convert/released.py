"""``scripts/convert_asuka.py``: every released ASUKA (FLUX.1-Fill) file found in ``src`` -> our folders in ``out``
(layout in :mod:`asuka.models.convert`), plus ``conversion_report.json``."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.models.convert.alignment import convert_official_alignment
from asuka.models.convert.ldm_decoder import convert_ldm_decoder
from asuka.models.mae_import import build_mae, load_released_into, read_released_file
from asuka.utils.errors import AsukaError, ConfigError
from asuka.utils.weights import file_sha256

#: The condition tensors: file stem -> (what it is, its shape with None for "any"); written to conditions/<stem>.
CONDITIONS = {
    "vec": ("null pooled condition (FLUX vec): c = vec + w (mean-pooled clip head - vec)", (1, "pooled")),
    "txt_256": ("null token condition (FLUX txt): c = txt_256 + w (t5 head - txt_256)", (1, None, "tokens")),
    "txt": ("stored prompt embedding of the FLUX.1-Fill-dev baseline (test_flux.py)", (1, None, "tokens")),
}
#: Where each released file goes, in the order they are converted.
RELEASED = {"mae_300.pth": "mae", "asuka_alignment_t5.pt": "alignment/t5", "asuka_alignment_clip.pt": "alignment/clip",
            "asuka_decoder.ckpt": "decoder", **{f"{stem}.pt": f"conditions/{stem}.safetensors" for stem in CONDITIONS}}
#: How the pipeline uses the folder (written into the report, so the folder explains itself).
USAGE = {
    "mae": "MaskedAutoencoderViT.from_pretrained; prior(image, mask) -> [B, 256, 512] (preprocess=official)",
    "alignment/t5": "AlignmentModule.from_pretrained; prior -> txt [B, 256, 4096]",
    "alignment/clip": "AlignmentModule.from_pretrained; prior -> [B, 256, 768], mean over tokens -> vec [B, 768]",
    "decoder": "AsukaDecoder.from_pretrained; decode(z, image=, mask=) on raw AE latents z = packed / 0.3611 + 0.1159; "
               "its encoder (encoder.* of the checkpoint) encodes the fill condition under recipe=official",
    "conditions": "c = null + condition_weight * (c_mae - null), condition_weight 0.5, for txt and vec",
}


def _mae(path: Path, cfg: DictConfig, out: Path) -> dict[str, Any]:
    """mae_300.pth -> out/mae, strictly: every parameter from the file, nothing left over. ``preprocess`` is
    ``official`` (the released MAE's loader) unless ``model.mae.preprocess`` names one."""
    state = read_released_file(path)
    sizes = OmegaConf.to_container(cfg.model.mae, resolve=True)
    model = build_mae({**sizes, "preprocess": sizes.get("preprocess") or "official"})
    check = load_released_into(model, state, str(path))
    if any(check.values()):
        found = "; ".join(f"{k}: {v}" for k, v in check.items() if v)
        raise AsukaError(f"{path}: not the released MAE layout ({found})")
    model.save_pretrained(str(out))
    dropped = sorted(k for k in state if k != "model") if isinstance(state, dict) and "model" in state else []
    return {"dropped": dropped, "renamed": {}, "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "preprocess": model.config.preprocess}


def _alignment(block: str) -> Callable[[Path, DictConfig, Path], dict[str, Any]]:
    def convert(path: Path, cfg: DictConfig, out: Path) -> dict[str, Any]:
        expect = OmegaConf.to_container(OmegaConf.select(cfg, f"model.{block}"), resolve=True)
        model, report = convert_official_alignment(read_released_file(path), str(path), expect)
        model.save_pretrained(str(out))
        return report
    return convert


def _decoder(path: Path, cfg: DictConfig, out: Path) -> dict[str, Any]:
    expect = OmegaConf.to_container(cfg.model.decoder, resolve=True) if cfg.model.get("decoder") else {}
    model, report = convert_ldm_decoder(read_released_file(path), str(path), expect)
    model.save_pretrained(str(out))
    if cfg.get("flux_ae"):
        report["encoder_vs_flux_ae"] = compare_encoder(model, Path(str(cfg.flux_ae)).expanduser())
    return report


def compare_encoder(decoder: Any, folder: Path) -> dict[str, Any]:
    """Max |diff| between the checkpoint's AE encoder and the encoder of a FLUX.1-Fill AE (a diffusers folder, or
    the model folder holding it in ``vae/``): says whether the release's fill encoder is FLUX's own."""
    from diffusers import AutoencoderKL

    root = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    if not (root / "config.json").is_file():
        raise ConfigError("flux_ae", f"{folder}: no AE config.json (give FLUX.1-Fill-dev's folder or its vae/)")
    theirs = AutoencoderKL.from_pretrained(str(root)).encoder.state_dict()
    ours = decoder.encoder.state_dict()
    if set(theirs) != set(ours) or any(theirs[k].shape != ours[k].shape for k in ours):
        return {"flux_ae": str(root), "comparable": False, "max_abs_diff": None, "equal": False}
    diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    return {"flux_ae": str(root), "comparable": True, "max_abs_diff": diff, "equal": diff == 0.0}


def _condition(stem: str) -> Callable[[Path, DictConfig, Path], dict[str, Any]]:
    def convert(path: Path, cfg: DictConfig, out: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        tensor = read_released_file(path)
        if not isinstance(tensor, torch.Tensor):
            raise AsukaError(f"{path}: expected one tensor, found {type(tensor).__name__}")
        dims = {"pooled": int(cfg.model.alignment_clip.out_dim), "tokens": int(cfg.model.alignment.out_dim)}
        want = tuple(dims.get(d, d) for d in CONDITIONS[stem][1])
        source_shape = list(tensor.shape)
        if tensor.ndim == len(want) - 1:  # the official code broadcasts with .repeat(bs, ...): no batch axis is fine
            tensor = tensor[None]
        if tensor.ndim != len(want) or any(w is not None and s != w for s, w in zip(tensor.shape, want)):
            shown = "[" + ", ".join("L" if w is None else str(w) for w in want) + "]"
            raise AsukaError(f"{path}: shape {source_shape}, expected {shown} ({CONDITIONS[stem][0]})")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({stem: tensor.contiguous()}, str(out))
        return {"dropped": [], "renamed": {}, "shapes": {stem: list(tensor.shape)}, "source_shape": source_shape,
                "dtype": str(tensor.dtype), "role": CONDITIONS[stem][0]}
    return convert


CONVERTERS: dict[str, Callable[[Path, DictConfig, Path], dict[str, Any]]] = {
    "mae_300.pth": _mae, "asuka_alignment_t5.pt": _alignment("alignment"),
    "asuka_alignment_clip.pt": _alignment("alignment_clip"), "asuka_decoder.ckpt": _decoder,
    **{f"{stem}.pt": _condition(stem) for stem in CONDITIONS},
}


def convert_asuka(cfg: DictConfig) -> Path:
    """Convert whichever released files are in ``cfg.src`` into ``cfg.out``; sizes are checked against
    ``cfg.model`` (``model=flux_fill``: the released sizes). Returns the path of ``conversion_report.json``."""
    for key in ("src", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ConfigError(key, f"required: pass {key}=...")
    src, out = Path(str(cfg.src)).expanduser(), Path(str(cfg.out)).expanduser()
    if not src.is_dir():
        raise ConfigError("src", f"{src} is not a folder (the released ckpt/ folder)")
    found = [name for name in RELEASED if (src / name).is_file()]
    if not found:
        raise ConfigError("src", f"{src} holds none of the released files ({', '.join(RELEASED)})")
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    overwrite = bool(cfg.get("overwrite", False))
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError("out", f"{out} is not empty (an earlier conversion?): choose an empty folder, or "
                                 "overwrite=true to replace it")
    # converted into a sibling temporary folder and renamed at the end: a failure leaves no partial parts, and a
    # finished conversion never mixes with an earlier one
    work = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        sources: dict[str, Any] = {}
        for name in found:
            report = CONVERTERS[name](src / name, cfg, work / RELEASED[name])
            sources[name] = {"sha256": file_sha256(src / name), "bytes": (src / name).stat().st_size,
                             "wrote": RELEASED[name], **report}
            print(f"{name} -> {out / RELEASED[name]}")
        (work / "conversion_report.json").write_text(json.dumps(
            {"src": str(src), "sources": sources, "usage": USAGE,
             "missing": [n for n in RELEASED if n not in found]}, indent=1))
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old)
        else:
            work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report_path = out / "conversion_report.json"
    print(f"wrote {report_path}")
    return report_path
