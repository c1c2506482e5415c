"""Loading weight files without running foreign code: safetensors, or torch.load(weights_only=True)."""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import torch

from asuka.utils.errors import AsukaError

TRUST_ENV = "ASUKA_TRUST_PICKLE"
#: Training-framework classes that released checkpoints pickle next to the weights (PyTorch Lightning < 1.5 keys
#: ``callbacks`` by the callback class): read as an inert stand-in, never imported.
DISCARDED_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


class DiscardedObject:
    """What a :data:`DISCARDED_GLOBALS` class unpickles to: holds nothing and runs nothing."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


def _allowed_globals() -> list:
    """Non-tensor types the released files need, by name: ``argparse.Namespace`` (MAE's ``args``), numpy scalars
    and arrays (optimizer / scheduler state), and :data:`DISCARDED_GLOBALS` as :class:`DiscardedObject`."""
    import numpy as np

    core = (np._core if hasattr(np, "_core") else np.core).multiarray  # numpy 2 renamed np.core to np._core
    allowed: list = [argparse.Namespace, np.ndarray, np.dtype, core.scalar, core._reconstruct,
                     (core.scalar, "numpy.core.multiarray.scalar"),  # numpy < 2 pickles these names
                     (core._reconstruct, "numpy.core.multiarray._reconstruct")]
    allowed += [type(np.dtype(code)) for code in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]
    allowed += [(DiscardedObject, name) for name in DISCARDED_GLOBALS]
    return allowed


def _foreign_globals(path: Path) -> str:
    """The names of the globals torch refuses in ``path`` (for the error message)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        return "objects"
    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1] for g in _allowed_globals()}
    return ", ".join(n for n in names if n not in allowed) or "objects"


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
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise AsukaError(
                f"{path}: refusing to unpickle {_foreign_globals(path)} (not in the allow-list of "
                f"asuka.utils.safe_load); convert it to safetensors on a machine you trust, or set {TRUST_ENV}=1 if "
                f"you trust this file"
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError) as exc:
        raise AsukaError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
