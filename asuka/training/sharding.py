"""Sharding the frozen backbone across processes (``trainer.shard_frozen``; configs/accelerate/fsdp_frozen.yaml).

The trainable modules of our stages are small and stay replicated (DDP through accelerate); what does not fit a
40-48 GB card is the frozen 12B FLUX transformer. torch's FSDP2 ``fully_shard`` splits each of its blocks (and the
rest) across the processes: a block's weights are all-gathered just before its forward and dropped after, and again
for the backward, which for frozen weights only carries gradients through to the conditions (no gradient or
optimizer state is sharded, nothing of it is checkpointed). Works on GPUs (NCCL) and on CPUs (gloo), where the tests
check it against the unsharded model.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from asuka.utils.errors import ConfigError

log = logging.getLogger(__name__)


def _own(value: Any) -> Any:
    """``value`` with every tensor that is a view of another replaced by its own copy (tuples, lists and diffusers'
    dict-like outputs walked)."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value._base is not None else value
    if isinstance(value, (tuple, list)):
        return type(value)(_own(v) for v in value)
    if isinstance(value, dict):
        for key in list(value.keys()):
            value[key] = _own(value[key])
    return value


def _copy_views(module: nn.Module, args: Any, output: Any) -> Any:
    """A sharded block's outputs as tensors of their own. diffusers' FLUX single block returns slices of one tensor;
    FSDP2 warns that an in-place op on such a view would skip its pre-backward all-gather and give wrong gradients.
    No code of ours or diffusers' does that today, but a copy (a few MB per block) removes the doubt for good."""
    return _own(output)


def shard_frozen(modules: dict[str, nn.Module], accelerator: Accelerator) -> list[str]:
    """``fully_shard`` every block of each frozen module's top-level ``nn.ModuleList``s, then the module itself, over
    all processes; returns the names sharded. One process: nothing to shard."""
    if accelerator.num_processes == 1:
        log.warning("trainer.shard_frozen: one process, nothing to shard")
        return []
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for name, module in modules.items():
        if any(p.requires_grad for p in module.parameters()):
            raise ConfigError("trainer.shard_frozen", f"'{name}' has trainable parameters; only frozen modules shard")
        for child in module.children():  # the top-level block lists (FLUX: transformer_blocks, single_...)
            if isinstance(child, nn.ModuleList):
                for block in child:
                    block.register_forward_hook(_copy_views)  # before fully_shard: runs before FSDP's own hook
                    fully_shard(block, mesh=mesh)
        module.register_forward_hook(_copy_views)
        fully_shard(module, mesh=mesh)
    log.info("sharded the frozen %s over %d processes (FSDP2)", ", ".join(modules), accelerator.num_processes)
    return list(modules)
