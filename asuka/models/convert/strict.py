"""Strict loading of a converted state dict, with one-line errors naming the file and the keys."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from asuka.utils.errors import AsukaError


def build_and_load(build: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], source: str,
                   what: str) -> nn.Module:
    """``build()`` without allocating or initialising weights (on the meta device), then ``state`` assigned into it:
    every parameter from the file (in the file's dtype), nothing left over, every shape equal."""
    with torch.device("meta"):
        model = build()
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing:
        raise AsukaError(f"{source}: missing keys for the {what}: {', '.join(missing)}")
    if extra:
        raise AsukaError(f"{source}: keys the {what} does not have: {', '.join(extra)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise AsukaError(f"{source}: '{key}' has shape {tuple(value.shape)}, the {what} needs "
                             f"{tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor outside the state dict (a non-persistent buffer) was never filled
        raise AsukaError(f"{source}: the {what} has tensors no file provides: {', '.join(left)}")
    return model
