"""The per-image metrics of an evaluation summed up: overall, per hole-area bin and per domain, with FID and
U-IDS/P-IDS for every subset that has enough images."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig

from asuka.eval import features as feats_mod
from asuka.eval.metrics import frechet_distance, ids_scores
from asuka.utils.errors import ConfigError


def area_bins(edges: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(label, low, high)`` of each hole-fraction bin (``metrics.area_bins``), e.g. ``("10-20%", 0.1, 0.2)``."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0 or edges[-1] > 1:
        raise ConfigError("metrics.area_bins", f"{edges}: need increasing hole-fraction edges in [0, 1]")
    return [(f"{round(a * 100):d}-{round(b * 100):d}%", a, b) for a, b in zip(edges, edges[1:])]


def bin_of(frac: float, bins: list[tuple[str, float, float]]) -> str | None:
    """The label of the bin holding ``frac`` (the last bin includes its upper edge)."""
    for k, (label, lo, hi) in enumerate(bins):
        if lo <= frac < hi or (k == len(bins) - 1 and frac == hi):
            return label
    return None


def ids_pca(cfg: DictConfig, variant: str) -> int | None:
    """PCA size before the SVM: official ASUKA projects to the resolution (when it is not 2048), co-mod-gan not."""
    value = cfg.metrics.get("ids_pca", "auto")
    if value in (None, "none", "null"):
        return None
    if value == "auto":
        res = int(cfg.resolution)
        return res if variant == "asuka_official" and res != feats_mod.FEATURE_DIM else None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError("metrics.ids_pca", f"{value!r}: expected auto, null or an integer") from None


def _nanmean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _summary(idx: np.ndarray, per_image: dict[str, np.ndarray], real: np.ndarray, fake: np.ndarray,
             min_images: int, pca_dim: int | None) -> dict:
    """Means of the per-image metrics and, with enough images, FID / U-IDS / P-IDS of the subset."""
    out: dict[str, Any] = {"count": int(len(idx))}
    for name in ("lpips", "psnr", "ssim", "grad", "clip", "color_error"):
        out[name] = _nanmean(per_image[name][idx]) if len(idx) else None
    out.update(fid=None, u_ids=None, p_ids=None, ids_pca_dim=None)
    if len(idx) >= max(2, min_images):
        r, f = real[idx], fake[idx]
        out["fid"] = frechet_distance(r, f)
        pca = None if pca_dim is None else min(pca_dim, 2 * len(idx), r.shape[1])
        out["u_ids"], out["p_ids"] = ids_scores(r, f, pca_dim=pca)
        out["ids_pca_dim"] = pca
    return out


def summarize(per_image: dict[str, np.ndarray], real: np.ndarray, fake: np.ndarray, area: Sequence[str | None],
              domains: Sequence[Any], bins: list[tuple[str, float, float]], min_images: int,
              pca_dim: int | None) -> dict[str, Any]:
    """``metrics`` (every image; FID from 2 images), ``by_area`` (every bin) and, when items have domains,
    ``by_domain``; a bin or domain gets FID / IDS only with ``min_images`` images."""
    all_idx = np.arange(len(area))
    results: dict[str, Any] = {"metrics": _summary(all_idx, per_image, real, fake, 2, pca_dim)}
    results["by_area"] = {label: _summary(np.array([i for i in all_idx if area[i] == label], dtype=int), per_image,
                                          real, fake, min_images, pca_dim) for label, _, _ in bins}
    if any(d is not None for d in domains):
        names = sorted({str(d) for d in domains if d is not None})
        results["by_domain"] = {d: _summary(np.array([i for i in all_idx if str(domains[i]) == d], dtype=int),
                                            per_image, real, fake, min_images, pca_dim) for d in names}
    return results
