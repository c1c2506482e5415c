"""Config checks that run before any model is loaded, each failing with one line naming the key."""
from __future__ import annotations

from omegaconf import DictConfig

from asuka.utils.errors import ConfigError


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> int:
    node, *rest = key.split(".")
    value = cfg.get(node)
    for part in rest:
        value = value.get(part) if value is not None else None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def check_fraction(value: object, key: str) -> float:
    """``value`` as a float in [0, 1], or a ConfigError naming ``key``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(key, f"must be in [0, 1], got {value!r}")
    return float(value)


def validate_training_config(cfg: DictConfig, num_processes: int) -> int:
    """Check the engine's keys and the data keys every stage shares; return the per-device batch size.

    ``trainer.global_batch`` (optional) fixes the effective batch: it must divide over processes x grad_accum.
    """
    for key in ("trainer.max_steps", "trainer.grad_accum", "trainer.log_every", "trainer.val_every",
                "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.nonfinite_patience"):
        _positive_int(cfg, key)
    _positive_int(cfg, "trainer.num_workers", minimum=0)
    resolution = _positive_int(cfg, "resolution", minimum=8)
    if resolution % 8:
        raise ConfigError("resolution", f"must be divisible by 8 (the VAE downsamples by 8), got {resolution}")
    check_fraction(cfg.trainer.max_bad_fraction, "trainer.max_bad_fraction")
    hole_range = cfg.get("mask", {}).get("hole_range")
    if hole_range is not None:
        lo, hi = (float(v) for v in hole_range)
        check_fraction(lo, "mask.hole_range")
        check_fraction(hi, "mask.hole_range")
        if lo > hi:
            raise ConfigError("mask.hole_range", f"lower bound {lo} exceeds upper bound {hi}")
    accum = int(cfg.trainer.grad_accum)
    global_batch = cfg.trainer.get("global_batch")
    if global_batch is None:
        return _positive_int(cfg, "trainer.batch_size")
    per_step = num_processes * accum
    if not isinstance(global_batch, int) or global_batch < per_step or global_batch % per_step:
        raise ConfigError(
            "trainer.global_batch",
            f"{global_batch} does not divide over {num_processes} process(es) x grad_accum {accum}",
        )
    return global_batch // per_step
