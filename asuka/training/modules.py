"""Saving and loading trainable modules inside checkpoints and ``final/``, in save_pretrained format."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import extract_model_from_parallel
from safetensors.torch import load_file, save_file
from torch import nn

from asuka.utils.errors import AsukaError

PLAIN_WEIGHTS = "model.safetensors"
PRETRAINED_WEIGHTS = "diffusion_pytorch_model.safetensors"


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    return extract_model_from_parallel(module)


def save_module(module: nn.Module, folder: Path) -> None:
    """diffusers modules via ``save_pretrained`` (config.json + safetensors); plain modules as safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(module, "save_pretrained"):
        module.save_pretrained(folder, safe_serialization=True)
    else:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(folder / PLAIN_WEIGHTS))


def load_module(module: nn.Module, folder: Path) -> None:
    """Load weights saved by ``save_module`` into an existing module (strict: every key must match)."""
    for name in (PRETRAINED_WEIGHTS, PLAIN_WEIGHTS):
        if (folder / name).is_file():
            try:
                missing, unexpected = module.load_state_dict(load_file(str(folder / name)), strict=False)
            except (RuntimeError, OSError, ValueError) as exc:  # shape mismatch, damaged file
                detail = " ".join(str(exc).split())[:300]
                raise AsukaError(f"{folder / name}: cannot be loaded into the model ({detail})") from None
            if missing or unexpected:
                raise AsukaError(f"{folder}: weights do not match the model (missing {missing}, unexpected {unexpected})")
            return
    raise AsukaError(f"{folder}: no {PRETRAINED_WEIGHTS} or {PLAIN_WEIGHTS} found")
