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


def check_number(value: object, key: str, *, above: float | None = None, at_least: float | None = None,
                 below: float | None = None) -> float:
    """``value`` as a float within the given bounds, or a ConfigError naming ``key``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ConfigError(key, f"must be a number, got {value!r}")
    bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
              f"< {below}" if below is not None else ""]
    if ((above is not None and not value > above) or (at_least is not None and not value >= at_least)
            or (below is not None and not value < below)):
        raise ConfigError(key, f"must be {' and '.join(b for b in bounds if b)}, got {value!r}")
    return float(value)


def check_optim(optim: DictConfig, key: str = "optim") -> None:
    """The optimizer block every stage's OptimizerSpec points at: names, a positive learning rate, sane betas."""
    name = str(optim.get("name", "adamw")).lower()
    if name not in ("adamw", "adam"):
        raise ConfigError(f"{key}.name", f"unknown optimizer {name!r} (adamw | adam)")
    lr_key = "base_lr" if optim.get("scale_lr", False) else "lr"
    check_number(optim.get(lr_key), f"{key}.{lr_key}", above=0.0)
    check_number(optim.get("weight_decay", 0.0), f"{key}.weight_decay", at_least=0.0)
    check_number(optim.get("min_lr", 0.0), f"{key}.min_lr", at_least=0.0)
    warmup = optim.get("warmup_steps", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"{key}.warmup_steps", f"must be an integer >= 0, got {warmup!r}")
    schedule = optim.get("schedule", "constant")
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"{key}.schedule", f"unknown schedule {schedule!r} (constant | cosine)")
    betas = list(optim.get("betas", (0.9, 0.999)))
    if len(betas) != 2:
        raise ConfigError(f"{key}.betas", f"must be two numbers, got {betas!r}")
    for beta in betas:
        check_number(beta, f"{key}.betas", at_least=0.0, below=1.0)


def validate_training_config(cfg: DictConfig, num_processes: int) -> int:
    """Check the engine's keys and the data keys every stage shares; return the per-device batch size.

    ``trainer.global_batch`` (optional) fixes the effective batch: it must divide over processes x grad_accum.
    """
    # each key's own type and range: asuka.utils.config_schema (run by fit); here what spans keys or stages
    if cfg.trainer.get("num_workers") != "auto":
        _positive_int(cfg, "trainer.num_workers", minimum=0)
    if "optim" in cfg:
        check_optim(cfg.optim)
    resolution = _positive_int(cfg, "resolution", minimum=8)
    if resolution % 8:
        raise ConfigError("resolution", f"must be divisible by 8 (the VAE downsamples by 8), got {resolution}")
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



def check_tracker_login(cfg: DictConfig) -> None:
    """``logger=wandb`` online needs a login (``WANDB_API_KEY`` or ``wandb login``'s netrc entry); without one
    wandb fails with a long traceback once the run has started. Checked before any model loads."""
    import netrc
    import os

    logger = cfg.get("logger") or {}
    if logger.get("tracker") != "wandb" or str(logger.get("mode", "online")) != "online":
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ConfigError("logger.mode", "logger=wandb is online but no wandb login was found (WANDB_API_KEY or "
                                     "`wandb login`); log in, or run with WANDB_MODE=offline (files in the run "
                                     "folder) or logger=tensorboard")
