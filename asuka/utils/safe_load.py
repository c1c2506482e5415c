"""Loading weight files without running foreign code: safetensors, or torch.load(weights_only=True)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from asuka.utils.errors import AsukaError

TRUST_ENV = "ASUKA_TRUST_PICKLE"


def load_state_dict(path: str | os.PathLike, allow_pickle: bool | None = None) -> dict:
    """Read a weights file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ``.ckpt``) into a dict of tensors.

    Pickle files are read with ``weights_only=True``. A file that would need full unpickling is refused unless
    ``allow_pickle`` is True (or ``ASUKA_TRUST_PICKLE=1``), which is only for files the user trusts.
    """
    path = Path(path)
    if not path.is_file():
        raise AsukaError(f"{path}: weights file not found")
    if allow_pickle is None:
        allow_pickle = os.environ.get(TRUST_ENV, "") == "1"
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # corrupt header, truncated file
            raise AsukaError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise AsukaError(
                f"{path}: refusing to unpickle arbitrary objects ({str(exc).splitlines()[0]}); convert it to "
                f"safetensors on a machine you trust, or set {TRUST_ENV}=1 if you trust this file"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise AsukaError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
