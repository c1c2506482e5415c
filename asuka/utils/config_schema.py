"""One table of every config value's type and range, checked for every script before anything loads.

``asuka.utils.cli.run`` calls :func:`validate_config` first, so ``seed=abc``, ``batch_size=2.5``,
``trainer.ema.decay=2`` or ``+trainer.overwrite=no`` are one line naming the key, whatever the script, and never a
traceback after ten steps. A rule applies where its key exists in the script's config; ``null`` is accepted where a
key may be unset. The stages' own cross-key checks (``Stage.check_config``) come after this one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from asuka.utils.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Rule:
    key: str
    kind: str  # int | float | bool | choice
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    high_open: bool = False  # high itself excluded
    low_open: bool = False  # low itself excluded
    choices: tuple[str, ...] = ()
    nullable: bool = True

    def _bound(self, value: float) -> str:
        return str(int(value)) if self.kind == "int" else str(float(value))

    def check(self, value: Any) -> None:
        """Raise a ConfigError naming the key unless ``value`` is of the rule's kind and within its bounds."""
        if value is None:
            if not self.nullable:
                raise ConfigError(self.key, "must be set")
            return
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(self.key, f"must be true or false, got {value!r}")
            return
        if self.kind == "choice":
            if str(value) not in self.choices:
                raise ConfigError(self.key, f"must be {', '.join(self.choices[:-1])} or {self.choices[-1]}, "
                                            f"got {value!r}")
            return
        bounds = [f"{'>' if self.low_open else '>='} {self._bound(self.low)}" if self.low is not None else "",
                  f"{'<' if self.high_open else '<='} {self._bound(self.high)}" if self.high is not None else ""]
        wanted = " and ".join(b for b in bounds if b)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if self.kind == "int" and not (is_number and isinstance(value, int)):
            raise ConfigError(self.key, f"must be an integer{' ' + wanted if wanted else ''}, got {value!r}")
        if not is_number:
            raise ConfigError(self.key, f"must be a number, got {value!r}")
        if ((self.low is not None and (value < self.low or (self.low_open and value == self.low)))
                or (self.high is not None and (value > self.high or (self.high_open and value == self.high)))):
            kind = "an integer " if self.kind == "int" else ""
            raise ConfigError(self.key, f"must be {kind}{wanted}, got {value!r}")


def _positive(key: str, kind: str = "int", nullable: bool = True) -> Rule:
    return Rule(key, kind, low=1 if kind == "int" else 0, low_open=kind != "int", nullable=nullable)


RULES: tuple[Rule, ...] = (
    Rule("seed", "int", low=0, nullable=False),
    # the training engine (configs/trainer/*.yaml)
    _positive("trainer.max_steps", nullable=False), _positive("trainer.batch_size", nullable=False),
    _positive("trainer.grad_accum"), _positive("trainer.global_batch"), _positive("trainer.log_every"),
    _positive("trainer.val_every"), _positive("trainer.checkpoint_every"), _positive("trainer.keep_checkpoints"),
    Rule("trainer.val_images", "int", low=0), Rule("trainer.max_grad_norm", "float", low=0),  # 0: no clipping
    Rule("trainer.ema.enabled", "bool"), Rule("trainer.ema.decay", "float", low=0, high=1, high_open=True),
    Rule("trainer.overwrite", "bool"), Rule("trainer.resume_mismatch", "choice", choices=("refuse", "warn")),
    Rule("trainer.cpu", "bool"), Rule("trainer.tf32", "bool"), Rule("trainer.shard_frozen", "bool"),
    Rule("trainer.mixed_precision", "choice", choices=("no", "fp16", "bf16")),
    _positive("trainer.nonfinite_patience"), Rule("trainer.max_bad_fraction", "float", low=0, high=1),
    # the optimiser (configs/<stage>.yaml: optim)
    _positive("optim.lr", "float"), _positive("optim.eps", "float"), Rule("optim.weight_decay", "float", low=0),
    Rule("optim.warmup_steps", "int", low=0),
    # LAR-Gen
    Rule("largen.unet_lr_scale", "float", low=0), Rule("largen.image_scale", "float", low=0),
    Rule("largen.guidance_scale", "float", low=0), Rule("largen.guidance_rescale", "float", low=0, high=1),
    _positive("largen.val_inference_steps"), Rule("largen.outpaint_ratio", "float", low=0, low_open=True, high=1),
    Rule("largen.outpaint_height", "int", low=8), Rule("largen.outpaint_width", "int", low=8),
    # sampling and evaluation (inpaint.py, eval.py, the app, export)
    _positive("steps"), _positive("num_inference_steps"), Rule("guidance_scale", "float", low=0),
    Rule("guidance", "float", low=0), Rule("condition_weight", "float", low=0),
    Rule("resolution", "int", low=8), _positive("batch_size"), Rule("paste_back", "bool"),
    Rule("downscale", "bool"), Rule("overwrite", "bool"), Rule("max_side", "int", low=64), Rule("recipe", "choice", choices=("ours", "official")),
    Rule("logger.mode", "choice", choices=("online", "offline", "disabled")),
    # the LAR-Gen data engine (make_largen_data.py)
    _positive("shard_size"), Rule("cpu", "bool"),
)


def validate_config(cfg: DictConfig) -> None:
    """Check every value :data:`RULES` knows that ``cfg`` has; the first wrong one is a ConfigError naming it."""
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=_MISSING, throw_on_missing=False)
        if value is not _MISSING and not isinstance(value, (DictConfig, list)) and not OmegaConf.is_list(value):
            rule.check(value)
