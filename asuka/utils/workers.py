"""How many data-loading worker processes to start."""
from __future__ import annotations

import os


def resolve_num_workers(value: int | str) -> int:
    """``trainer.num_workers``: a number, or ``auto`` = the CPU cores this process may use, shared by the processes
    of this node, at most 16 (our choice), so the default never asks for more workers than the machine has."""
    if value != "auto":
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(16, cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
