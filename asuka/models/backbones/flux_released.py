"""The converted ASUKA-FLUX release (``scripts/convert_asuka.py``, ``paths.asuka_flux``): where each part lies and
its stored FLUX condition tensors. The backbone's floor, so the pipeline builder and the training stages (null
conditions for dropout and the latent cache) read the conditions the same way without one importing the other."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from asuka.models.backbones.base import ConditionShapes
from asuka.models.backbones.flux import FluxConditions
from asuka.models.mae_import import TINY_SEED
from asuka.utils.config import is_given
from asuka.utils.errors import AsukaError
from asuka.utils.safe_load import load_state_dict

# Where each part lies inside paths.asuka_flux (the converter's layout).
LAYOUT = {"mae": "mae", "alignment": "alignment/t5", "alignment_clip": "alignment/clip", "decoder": "decoder",
          "conditions": "conditions"}
# The released condition tensors: ASUKA blends with the null pair, the baseline runs with the stored prompt.
CONDITION_FILES = {"asuka": ("txt_256", "vec"), "baseline": ("txt", "vec")}


def converted_part(cfg: DictConfig, name: str) -> Path | None:
    """``<name>=`` on the command line, else ``paths.asuka_flux/<layout>`` when that folder is given."""
    if is_given(cfg.get(name)):
        return Path(os.path.expanduser(str(cfg.get(name))))
    root = OmegaConf.select(cfg, "paths.asuka_flux")
    return Path(os.path.expanduser(str(root))) / LAYOUT[name] if is_given(root) else None


def use_part(path: Path | None, tiny: bool) -> bool:
    """Read a part from ``path``: always when given with real weights; with tiny parts only when it exists."""
    return path is not None and (not tiny or path.exists())


def read_condition_tensor(folder: Path, stem: str) -> torch.Tensor:
    """The one tensor of ``folder/<stem>.safetensors`` (or ``.pt``, read with ``weights_only``)."""
    for suffix in (".safetensors", ".pt"):
        if (folder / f"{stem}{suffix}").is_file():
            state = load_state_dict(folder / f"{stem}{suffix}")
            tensors = [state] if isinstance(state, torch.Tensor) else [v for v in state.values()
                                                                      if isinstance(v, torch.Tensor)]
            if len(tensors) != 1:
                raise AsukaError(f"{folder / (stem + suffix)}: expected one tensor, found {len(tensors)}")
            return tensors[0]
    raise AsukaError(f"{folder}: no {stem}.safetensors or {stem}.pt (the released condition tensors)")


def flux_conditions(cfg: DictConfig, kind: str, shapes: ConditionShapes, tiny: bool) -> FluxConditions:
    """The condition pair of ``kind`` (``asuka``: the null ``txt_256``/``vec``; ``baseline``: the stored prompt ``txt``/
    ``vec``) from the converted folder, or seeded random tensors of the right shapes for tiny parts."""
    folder = converted_part(cfg, "conditions")
    if use_part(folder, tiny):
        txt_name, vec_name = CONDITION_FILES[kind]
        return FluxConditions.from_tensors(read_condition_tensor(folder, txt_name),
                                           read_condition_tensor(folder, vec_name))
    tokens = int(cfg.model.mae.img_size) // int(cfg.model.mae.patch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return FluxConditions.from_tensors(torch.randn(1, tokens ** 2, shapes.token_dim),
                                           torch.randn(1, shapes.pooled_dim))
