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

from accelerate import Accelerator
from torch import nn

from asuka.utils.errors import ConfigError

log = logging.getLogger(__name__)


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
                    fully_shard(block, mesh=mesh)
        fully_shard(module, mesh=mesh)
    log.info("sharded the frozen %s over %d processes (FSDP2)", ", ".join(modules), accelerator.num_processes)
    return list(modules)
