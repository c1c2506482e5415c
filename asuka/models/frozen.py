"""Loading a frozen diffusers backbone (SD-1.5 inpainting, FLUX.1-Fill) from a hub id, a local folder or tiny random
weights: one loader, told by a :class:`FrozenModelSpec` what differs, so ``source: pretrained | tiny``, the folder
checks, the one-line errors, the dtype and the freezing mean the same for every backbone."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from asuka.utils.config import cfg_get, is_given
from asuka.utils.errors import AsukaError, ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
_CONFIG_FILES = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json",
                 "tokenizer_2": "tokenizer_config.json"}  # every other part has a config.json


def resolve_dtype(value: str | torch.dtype | None, key: str = "model.sd.dtype") -> torch.dtype:
    """``"float32" | "bfloat16" | "float16"`` (or a torch dtype) -> torch dtype; anything else is a ConfigError."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    if str(value) not in _DTYPES:
        raise ConfigError(key, f"unknown dtype '{value}', expected one of float32, bfloat16, float16")
    return _DTYPES[str(value)]


def looks_local(path: str) -> bool:
    """A hub id is ``owner/name``; anything else that is path-shaped is meant as a local folder."""
    p = str(path)
    return p.startswith(("/", "./", "../", "~", ".")) or p.count("/") > 1 or "\\" in p or Path(p).exists()


@dataclass(frozen=True)
class FrozenModelSpec:
    """What differs between the frozen backbones: names for messages, the config block and paths key, the diffusers
    class of each subfolder (in the order of the components' fields), the components class, the tiny builder, and
    the input width the denoiser must have."""

    name: str  # in messages, e.g. "SD-1.5 inpainting"
    block: str  # its config block, e.g. "model.sd"
    paths_key: str  # where its weights are given, e.g. "paths.sd_inpaint"
    classes: Mapping[str, Any]  # subfolder -> diffusers class
    components: Callable[..., Any]  # the components dataclass, one field per subfolder
    build_tiny: Callable[[int], Any]  # seed -> small random components
    in_channels: tuple[str, int, str]  # (part, input channels, what has that many)
    hub_note: str = ""  # added to the hint when a hub id cannot be read

    @property
    def layout(self) -> str:
        return ", ".join(f"{part}/" for part in self.classes)


def _check_local_folder(spec: FrozenModelSpec, path: Path, parts: tuple[str, ...]) -> None:
    if not path.is_dir():
        raise AsukaError(f"{path}: {spec.name} folder not found (a diffusers folder with {spec.layout}; set "
                         f"{spec.paths_key})")
    files = [f"{p}/{_CONFIG_FILES.get(p, 'config.json')}" for p in parts]
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise AsukaError(f"{path}: not a diffusers {spec.name} folder, missing {', '.join(missing)} "
                         f"(expected {spec.layout})")


def from_pretrained(cls: Any, path: str, subfolder: str, hint: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, subfolder)``; a failure is one AsukaError line (``hint``: the local folder to give
    instead of a hub id)."""
    try:
        return cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if looks_local(path) else f" (no network? give a local folder with {hint})"
        raise AsukaError(f"{path}: cannot load {subfolder}/ as {cls.__name__}: {first}{hint}") from None


def _read_pretrained(spec: FrozenModelSpec, path: Any, parts: tuple[str, ...], dtype: torch.dtype) -> dict[str, Any]:
    if not is_given(path):
        raise ConfigError(spec.paths_key, f"no {spec.name} weights given (a hub id or a local folder)")
    path = os.path.expanduser(str(path))
    if looks_local(path):
        _check_local_folder(spec, Path(path), parts)
    else:
        from huggingface_hub import constants

        log.warning("reading %s from the Hugging Face hub%s", path,
                    " cache (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else " (downloads what is not cached)")
    hint = f"{spec.layout} as {spec.paths_key}{spec.hub_note}"
    loaded = {p: from_pretrained(spec.classes[p], path, p, hint,
                                 **({"torch_dtype": dtype} if issubclass(spec.classes[p], torch.nn.Module) else {}))
              for p in parts}
    part, channels, what = spec.in_channels
    model = loaded.get(part)
    if model is not None and int(model.config.in_channels) != channels:
        raise AsukaError(f"{path}: {part}/ has {model.config.in_channels} input channels; {what}")
    return loaded


def load_frozen(spec: FrozenModelSpec, block_cfg: Any, path: str | os.PathLike | None,
                device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                parts: tuple[str, ...] | None = None) -> Any:
    """The components of ``spec`` (``block_cfg``: ``source: pretrained`` reads ``path``, a hub id or a local diffusers
    folder, from the local hub cache under ``HF_HUB_OFFLINE``; ``source: tiny`` builds random ones from ``seed``).
    ``dtype`` (default the block's ``dtype``) applies to the models, which come back frozen, in eval mode, on
    ``device``. ``parts`` limits what is read; the others are None."""
    parts = tuple(spec.classes) if parts is None else tuple(parts)
    unknown = [p for p in parts if p not in spec.classes]
    if unknown:
        raise ValueError(f"unknown {spec.name} parts {unknown}; expected some of {tuple(spec.classes)}")
    source = cfg_get(block_cfg, "source", "pretrained")
    dtype = resolve_dtype(dtype if dtype is not None else cfg_get(block_cfg, "dtype", "float32"), f"{spec.block}.dtype")
    if source == "tiny":
        tiny = spec.build_tiny(int(cfg_get(block_cfg, "seed", 0)))
        loaded = {p: getattr(tiny, p) for p in parts}
    elif source == "pretrained":
        loaded = _read_pretrained(spec, path, parts, dtype)
    else:
        raise ConfigError(f"{spec.block}.source", f"unknown source '{source}', expected pretrained or tiny")
    for module in loaded.values():
        if isinstance(module, torch.nn.Module):
            if module.dtype != dtype:  # tiny parts are built in float32
                module.to(dtype=dtype)
            module.to(device).requires_grad_(False).eval()
    return spec.components(**{p: loaded.get(p) for p in spec.classes})
