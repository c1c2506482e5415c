"""What an evaluation's config selects, read in one place by generation, scoring and the checks: which metrics it
computes (``metrics.include``: by default the table of the method's family, so the paper's SD-1.5 table needs no CLIP
weights and the ASUKA-FLUX table adds Grad and CLIP) and which recipe (``recipe``)."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from asuka.pipelines.methods import FLUX_METHODS
from asuka.utils.errors import ConfigError

METRICS = ("fid", "u_ids", "p_ids", "lpips", "psnr", "ssim", "grad", "clip", "color_error")
# every metric but CLIP for the SD family (FID, U-IDS, P-IDS, LPIPS of the paper, and the cheap ones beside them)
SD_TABLE = tuple(m for m in METRICS if m != "clip")


def included_metrics(cfg: DictConfig) -> tuple[str, ...]:
    """``metrics.include`` checked, or the family default (ASUKA-FLUX / FLUX.1-Fill: all; others: all but CLIP)."""
    chosen = OmegaConf.select(cfg, "metrics.include")
    if chosen is None:
        return METRICS if cfg.method.get("name") in FLUX_METHODS else SD_TABLE
    chosen = [str(m) for m in chosen]
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown or not chosen:
        raise ConfigError("metrics.include", f"{', '.join(unknown) or 'empty'}: choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in chosen)


def official_recipe(cfg: DictConfig) -> bool:
    """``recipe=official``: grey masks kept, Grad and the CLIP hole as the released scripts (ASUKA-FLUX only)."""
    return str(cfg.get("recipe") or "ours") == "official"
