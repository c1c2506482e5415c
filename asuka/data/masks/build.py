"""Build the mixed mask generator from the ``mask`` config group, and time it."""
from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import asuka.utils.cli  # noqa: F401  (registers the resolvers that mask configs reach through ${paths.*})
from asuka.data.masks.mixed import DEFAULT_PROBS, MixedMaskGenerator
from asuka.data.masks.objects import build_object_source
from asuka.utils.errors import ConfigError

_KEYS = ("probs", "object_union_prob", "irregular_comod_prob", "complement_prob", "hole_range", "max_tries",
         "comod", "lama", "objects", "rectangle", "object_source")


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _resolved(mask_cfg: Mapping | DictConfig, paths_cfg: Mapping | DictConfig | None) -> dict:
    """A plain dict of the mask group; ``paths_cfg`` resolves ``${paths.*}`` when the group stands alone."""
    try:
        if paths_cfg is not None:
            raw = OmegaConf.to_container(mask_cfg, resolve=False) if isinstance(mask_cfg, DictConfig) else mask_cfg
            root = OmegaConf.create({"paths": _plain(paths_cfg), "mask": raw})
            return OmegaConf.to_container(root.mask, resolve=True)
        return dict(_plain(mask_cfg))
    except OmegaConfBaseException as exc:
        raise ConfigError("mask", f"cannot resolve the mask config ({type(exc).__name__}: {exc})") from None


def build_mask_generator(mask_cfg: Mapping | DictConfig,
                         paths_cfg: Mapping | DictConfig | None = None) -> MixedMaskGenerator:
    """The generator described by ``configs/mask/*.yaml`` (keys mirror ``MixedMaskGenerator``; ``object_source``
    holds ``coco_instances`` / ``mask_dir`` / ``min_area`` for the silhouettes)."""
    cfg = _resolved(mask_cfg, paths_cfg)
    if "defaults" in cfg:
        raise ConfigError("mask.defaults", "compose the mask group with Hydra (eval.yaml extends mixed.yaml); a raw "
                                           "OmegaConf.load() does not apply a defaults list")
    unknown = sorted(set(cfg) - set(_KEYS))
    if unknown:
        raise ConfigError(f"mask.{unknown[0]}", f"unknown key; expected one of {', '.join(_KEYS)}")
    source_cfg = cfg.pop("object_source", None) or {}
    source = None
    if float((cfg.get("probs") or DEFAULT_PROBS).get("object", 0.0)) > 0:
        try:
            source = build_object_source(**source_cfg)
        except TypeError as exc:
            raise ConfigError("mask.object_source", str(exc)) from None
    return MixedMaskGenerator(**cfg, object_source=source)


def benchmark(generator: MixedMaskGenerator, n: int = 200, size: int = 512, seed: int = 0) -> float:
    """Masks per second of ``generator`` at ``size`` x ``size`` on one core, after one warm-up. Counted in CPU time
    of this process (the generator is single-threaded), so other jobs on a shared machine do not skew it."""
    from asuka.data.seeding import sample_rng

    generator(np.random.default_rng(seed), size, size)
    start = time.process_time()
    for i in range(n):
        generator(sample_rng(seed, 0, i), size, size)
    return n / max(time.process_time() - start, 1e-9)
