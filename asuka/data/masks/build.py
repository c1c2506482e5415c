"""Build the mixed mask generator (or the mask bank) from the ``mask`` config group."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import asuka.utils.cli  # noqa: F401  (registers the resolvers that mask configs reach through ${paths.*})
from asuka.data.masks.mixed import DEFAULT_PROBS, MixedMaskGenerator
from asuka.data.masks.objects import build_object_source
from asuka.utils.errors import ConfigError

if TYPE_CHECKING:  # asuka.data.mask_bank imports this package
    from asuka.data.mask_bank import MaskBank

_KEYS = ("probs", "object_union_prob", "irregular_comod_prob", "complement_prob", "hole_range", "max_tries",
         "comod", "lama", "objects", "rectangle", "object_source", "source", "bank")
SOURCES = ("online", "bank")


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
                         paths_cfg: Mapping | DictConfig | None = None) -> MixedMaskGenerator | "MaskBank":
    """The generator described by ``configs/mask/*.yaml`` (keys mirror ``MixedMaskGenerator``; ``object_source``
    holds ``coco_instances`` / ``mask_dir`` / ``min_area`` for the silhouettes), or, with ``source: bank``, the
    written mask bank in the folder ``bank`` (the generator keys then describe how that bank was made)."""
    cfg = _resolved(mask_cfg, paths_cfg)
    source, bank = cfg.pop("source", "online"), cfg.pop("bank", None)
    if source not in SOURCES:
        raise ConfigError("mask.source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "bank":
        if not bank:
            raise ConfigError("mask.bank", "required with mask.source=bank: the folder of a bank written by "
                                           "scripts/make_masks.py format=bank")
        from asuka.data.mask_bank import MaskBank

        return MaskBank(bank)
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
