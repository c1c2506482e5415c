"""Per-sample random generators, so a sample depends only on (seed, epoch, index), never on the worker or rank."""
from __future__ import annotations

import numpy as np


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample: the same triple gives the same stream in any process, worker or resume."""
    for name, value in (("seed", seed), ("epoch", epoch), ("index", index)):
        if int(value) < 0:
            raise ValueError(f"sample_rng: {name} must be >= 0, got {value}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch), int(index)])))
