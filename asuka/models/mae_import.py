"""Loading released MAE weights (official MAE, MAE-FAR, ASUKA ``mae_300.pth``) into :class:`MaskedAutoencoderViT`.

Released layouts (key names from facebookresearch/mae ``models_mae.py``, ewrfcas/MAE-FAR ``MAE/models_mae.py``,
Yikai-Wang/asuka-misato ``asuka-flux/MAE/models_mae.py``; all are ``{"model": state_dict, ...}`` files):

- official MAE (``mae_visualize_vit_base.pth``): ``cls_token`` and position embeddings with a class row
  (``pos_embed`` [1, 197, 768] at 224 px); no ``decoder_patch_embed`` / ``alpha``. The encoder-only
  ``mae_pretrain_vit_base.pth`` has no decoder and is refused (the prior comes from the decoder).
- MAE-FAR / ASUKA (``MaskedAutoencoderViTFinetune``): no class token, ``pos_embed`` [1, 256, 768] at 256 px, plus
  ``decoder_patch_embed.proj.*`` and the scalar ``alpha``. Our parameter names are the same.

Position embeddings are fixed sin-cos values: when a released grid differs from the model's (224 vs 256 px) they are
recomputed for the model's grid.

Preprocessing (``model.mae.preprocess``, see :data:`asuka.models.mae_preprocess.PREPROCESS`): a released MAE-FAR /
ASUKA file gets ``official`` (the loader it was used with) unless the config names one; our folders keep what they
were saved with unless the config names one.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from asuka.models.mae import MaskedAutoencoderViT
from asuka.models.mae_preprocess import PREPROCESS
from asuka.utils.errors import AsukaError, ConfigError

log = logging.getLogger(__name__)

#: Parameters that only the MAE-FAR finetune variant has: initialised fresh when a file lacks them.
NEW_KEYS = ("decoder_patch_embed.proj.weight", "decoder_patch_embed.proj.bias", "alpha")
#: Fixed sin-cos buffers: recomputed for the model's grid when missing or of another grid.
POS_KEYS = ("pos_embed", "decoder_pos_embed")
#: Wrapper keys under which training scripts store the weights.
_WRAPPERS = ("model", "state_dict", "module")


def _unwrap(state: Mapping[str, Any]) -> dict[str, Any]:
    """The tensor dict inside a checkpoint (``{"model": ...}`` from MAE's save_model), without a DDP prefix."""
    state = dict(state)
    for key in _WRAPPERS:
        inner = state.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            state = dict(inner)
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def detect_layout(state: Mapping[str, Any]) -> str:
    """``"official-mae"`` (class token), ``"mae-far"`` (finetune variant: MAE-FAR or ASUKA) or ``"mae-no-cls"``."""
    sd = _unwrap(state)
    if "cls_token" in sd:
        return "official-mae"
    if "decoder_patch_embed.proj.weight" in sd or "alpha" in sd:
        return "mae-far"
    return "mae-no-cls"


def convert_released_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map a released MAE checkpoint (any of the three layouts, wrapped or not) to our parameter names.

    Drops ``cls_token`` and the class row of the position embeddings (our model has no class token); other names
    are already ours. Non-tensor entries (optimizer state, epoch, args) are ignored.
    """
    sd = _unwrap(state)
    if not sd:
        raise AsukaError("no tensors found in the MAE checkpoint (expected a state dict or {'model': state_dict})")
    has_cls = "cls_token" in sd
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "cls_token":
            continue
        if key in POS_KEYS and has_cls and value.ndim == 3:
            value = value[:, 1:]
        if key == "alpha" and value.numel() == 1:
            value = value.reshape(())
        out[key] = value
    return out


def read_released_file(path: str | os.PathLike) -> dict:
    """Read a released weights file without running foreign code (weights_only; MAE's pickled ``args`` Namespace
    is on :mod:`asuka.utils.safe_load`'s allow-list)."""
    from asuka.utils.safe_load import load_state_dict

    return load_state_dict(path)


def _as_dict(config: Any) -> dict:
    if config is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            return dict(OmegaConf.to_container(config, resolve=True))
    except ImportError:  # pragma: no cover
        pass
    return dict(config)


def build_mae(config: Any = None) -> MaskedAutoencoderViT:
    """A fresh model from a ``model.mae`` block; an unknown or bad key is a ConfigError naming it."""
    kwargs = _as_dict(config)
    allowed = set(inspect.signature(MaskedAutoencoderViT.__init__).parameters) - {"self"}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"model.mae.{key}", f"unknown MAE option (known: {', '.join(sorted(allowed))})")
    try:
        return MaskedAutoencoderViT(**kwargs)
    except ValueError as exc:
        raise ConfigError("model.mae", str(exc)) from None


def load_released_into(model: MaskedAutoencoderViT, state: Mapping[str, Any], source: str) -> dict[str, list[str]]:
    """Load a released state dict into ``model``; returns the report ``{missing_new, recomputed, unexpected}``.

    Wrong shapes and missing essential keys raise AsukaError naming the key and ``source``; keys we do not know
    are logged (by name) and skipped.
    """
    sd = convert_released_state_dict(state)
    own = model.state_dict()
    report: dict[str, list[str]] = {"missing_new": [], "recomputed": [], "unexpected": []}
    to_load: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in own:
            report["unexpected"].append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            if key in POS_KEYS:
                report["recomputed"].append(key)
                log.info("%s: %s has shape %s, the model's grid needs %s; using the fixed sin-cos values",
                         source, key, tuple(value.shape), tuple(own[key].shape))
                continue
            raise AsukaError(
                f"{source}: key '{key}' has shape {tuple(value.shape)} but the model expects {tuple(own[key].shape)} "
                f"(wrong model config for this checkpoint?)"
            )
        if key in POS_KEYS:
            diff = (value.float() - own[key].float()).abs().max().item()
            if diff > 1e-4:
                log.warning("%s: %s differs from the standard sin-cos table (max |diff| %.3g); using the file's values",
                            source, key, diff)
        to_load[key] = value
    missing = [k for k in own if k not in sd]
    essential = [k for k in missing if k not in NEW_KEYS and k not in POS_KEYS]
    if essential:
        shown = ", ".join(essential[:8]) + (f", ... ({len(essential)} in all)" if len(essential) > 8 else "")
        hint = ""
        if any(k.startswith("decoder_") for k in essential) and not any(k.startswith("blocks.") for k in essential):
            hint = " (an encoder-only checkpoint such as mae_pretrain_vit_*.pth? use one with the decoder)"
        raise AsukaError(f"{source}: MAE checkpoint lacks essential keys: {shown}{hint}")
    for key in missing:
        if key in NEW_KEYS:
            report["missing_new"].append(key)
        elif key not in report["recomputed"]:
            report["recomputed"].append(key)
    if report["missing_new"]:
        log.warning("%s: not in the checkpoint, initialised fresh: %s", source, ", ".join(report["missing_new"]))
    if report["unexpected"]:
        log.warning("%s: keys the model does not use, ignored: %s", source, ", ".join(report["unexpected"]))
    model.load_state_dict(to_load, strict=False)
    return report


def _preprocess_choice(config: dict) -> str | None:
    """``model.mae.preprocess`` (None = the weights' own), checked; removed from ``config``."""
    choice = config.pop("preprocess", None)
    if choice is not None and choice not in PREPROCESS:
        raise ConfigError("model.mae.preprocess", f"must be one of {', '.join(PREPROCESS)} or null, got {choice!r}")
    return choice


def _check_folder_config(model: MaskedAutoencoderViT, config: dict, folder: Path) -> None:
    """A folder's saved sizes must agree with the requested ones: a silent mismatch would break every later stage."""
    for key, want in config.items():
        have = model.config.get(key, None)
        if have is not None and have != want:
            raise ConfigError(f"model.mae.{key}", f"is {want}, but the MAE folder {folder} was saved with {have}")


def load_mae(src: str | os.PathLike, config: Any = None) -> MaskedAutoencoderViT:
    """Load an MAE from our folder (``config.json`` + safetensors) or from a released weights file.

    ``config`` is the ``model.mae`` block. For a released file it gives the sizes (None = the paper's ViT-B/16 at
    256 px); for a folder it is only checked against the saved config. The model is returned in eval mode.
    """
    path = Path(src)
    cfg = _as_dict(config)
    preprocess = _preprocess_choice(cfg)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AsukaError(f"{path}: not an MAE folder (no config.json); pass the folder written by save_pretrained "
                             f"or scripts/convert_mae.py, or a released .pth file")
        try:
            model = MaskedAutoencoderViT.from_pretrained(str(path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise AsukaError(f"{path}: cannot load the MAE folder ({str(exc).splitlines()[0]})") from None
        _check_folder_config(model, cfg, path)
        if preprocess is not None:
            model.register_to_config(preprocess=preprocess)
        return model.eval()
    if not path.is_file():
        raise AsukaError(f"{path}: MAE weights not found")
    state = read_released_file(path)
    if not isinstance(state, Mapping):
        raise AsukaError(f"{path}: expected a state dict, found {type(state).__name__}")
    layout = detect_layout(state)
    model = build_mae({**cfg, "preprocess": preprocess or ("official" if layout == "mae-far" else "ours")})
    report = load_released_into(model, state, str(path))
    log.info("%s: loaded MAE (%s layout, preprocess=%s); recomputed %s", path, layout, model.config.preprocess,
             report["recomputed"] or "nothing")
    return model.eval()


def convert_mae(cfg: Any) -> Path:
    """``scripts/convert_mae.py``: read ``cfg.src`` (released file or our folder) with ``cfg.model.mae`` sizes and
    write our folder format to ``cfg.out`` (``save_pretrained``)."""
    from omegaconf import OmegaConf

    for key in ("src", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise ConfigError(key, f"required: pass {key}=...")
    out = Path(str(cfg.out))
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder")
    model = load_mae(str(cfg.src), cfg.model.mae)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    print(f"wrote {out} (MAE, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return out


TINY_SEED = 0  # our choice: the seed of every tiny random component (demo, tests)


def load_frozen_mae(cfg: Any, path: Any = None) -> MaskedAutoencoderViT:
    """The frozen stage-1 MAE that stages 2-3 and the pipeline use: ``path`` or ``paths.mae`` (a final/mae folder
    or a released/converted file). With ``model=tiny`` and no path, a tiny random MAE (fixed seed), for the demo
    and tests; otherwise a missing path is a ConfigError naming ``paths.mae``."""
    src = path if path not in (None, "", "null") else cfg.paths.get("mae")
    if src in (None, "", "null"):
        from asuka.models.backbones import backbone_for  # the tiny flag lives in the backbone's model block

        if str((cfg.model.get(backbone_for(cfg.model).config_key) or {}).get("source")) != "tiny":
            raise ConfigError("paths.mae", "stage 2/3 and the pipeline need the stage-1 MAE (a final/mae folder)")
        log.warning("paths.mae not set: using a tiny random MAE (model=tiny)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = build_mae(cfg.model.mae)
    else:
        model = load_mae(os.path.expanduser(str(src)), cfg.model.mae)
    return model.requires_grad_(False).eval()
