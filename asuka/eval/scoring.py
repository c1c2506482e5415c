"""Scoring: one pass over the ground truth and the predictions that composites, computes the per-image metrics and
feeds the Inception features of both sets (each cached on disk, so the ground truth of a dataset is embedded once for
every method), then the summaries and the run's metadata."""
from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from asuka.eval import features as feats_mod
from asuka.eval.clip_score import build_clip, clip_similarity, hole_pair, official_hole
from asuka.eval.grad import boundary_gradient_error, official_boundary_gradient_error
from asuka.eval.items import MASK_THRESHOLD, item_key
from asuka.eval.metrics import build_lpips, lpips_metric, psnr, ssim
from asuka.eval.selection import included_metrics, official_recipe
from asuka.eval.summary import area_bins, bin_of, ids_pca, summarize
from asuka.utils.errors import AsukaError, DataError
from asuka.utils.workers import resolve_num_workers

_VERSION_PACKAGES = ("asuka", "torch", "torchvision", "torch-fidelity", "lpips", "scikit-learn", "scipy",
                     "scikit-image", "numpy", "pillow", "diffusers")


def composite(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``pred`` inside the hole, ``gt`` elsewhere (mask >= 0.5 is hole); known pixels are exactly the gt's."""
    hole = (mask >= MASK_THRESHOLD).expand_as(gt)
    return torch.where(hole, pred, gt)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images to uint8 (the inverse of ``pil_to_tensor``, exact for images read from 8-bit files)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _device(cfg: DictConfig) -> torch.device:
    cpu = bool(OmegaConf.select(cfg, "trainer.cpu", default=False))
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


class _ScoredPairs(torch.utils.data.Dataset):
    """EvalDataset samples with their prediction, composite and CPU metrics (PSNR, SSIM, colour error).

    The per-image CPU metrics run here, i.e. in the DataLoader workers, in parallel (SSIM is the slow one);
    LPIPS and Inception run batched on the main process. Errors travel as values so that they stay one line.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, pred_paths: Sequence[Path], items: Sequence[Any],
                 use_composite: bool, band: int, official: bool = False) -> None:
        self.dataset, self.pred_paths, self.items = dataset, list(pred_paths), list(items)
        self.use_composite, self.band = use_composite, band
        self.official = official  # recipe=official: Grad and the CLIP hole as cal_grad.py / cal_clip_score.py

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        from asuka.data.color import boundary_color_error
        from asuka.data.images import load_image, pil_to_tensor

        try:
            sample = self.dataset[index]
            pred_img = load_image(self.pred_paths[index])
        except AsukaError as exc:
            return {"error": str(exc)}
        gt, mask = sample["image"][None].float(), sample["mask"][None].float()
        item = self.items[index]
        if tuple(mask.shape[-2:]) != tuple(gt.shape[-2:]):
            return {"error": f"{item.mask}: mask is {tuple(mask.shape[-2:])} (HxW) but image {item.image} is "
                             f"{tuple(gt.shape[-2:])} after loading at resolution"}
        if (pred_img.height, pred_img.width) != tuple(gt.shape[-2:]):
            return {"error": f"{self.pred_paths[index]}: prediction is {pred_img.height}x{pred_img.width} (HxW) but "
                             f"the ground truth {item.image} is {gt.shape[-2]}x{gt.shape[-1]} at the "
                             "evaluation resolution"}
        pred = pil_to_tensor(pred_img)[None]
        scored = composite(pred, gt, mask) if self.use_composite else pred
        gt01, sc01 = (gt + 1) / 2, (scored + 1) / 2
        hole = (mask[0, 0] >= MASK_THRESHOLD).numpy()
        gt8, sc8 = (to_uint8(t[0]).permute(1, 2, 0).numpy() for t in (gt, scored))
        if self.official:
            mask8 = (mask[0, 0] * 255).round().to(torch.uint8).numpy()
            hole = official_hole(mask8)
            grad = official_boundary_gradient_error(to_uint8(pred[0]).permute(1, 2, 0).numpy(), gt8, mask8)
        else:
            grad = boundary_gradient_error(sc8, gt8, hole)
        clip_pred, clip_gt = hole_pair(sc8, gt8, hole)
        return {"index": index, "gt": gt[0], "scored": scored[0], "clip_pred": clip_pred, "clip_gt": clip_gt,
                "grad": float(grad.mean()),
                "psnr": float(psnr(sc01, gt01)[0]), "ssim": float(ssim(sc01, gt01)[0]),
                "color_error": float(boundary_color_error(scored, gt, mask, band=self.band)[0]),
                "hole_fraction": float((mask >= MASK_THRESHOLD).float().mean())}


def _collate(batch: list[dict]) -> dict:
    for sample in batch:
        if "error" in sample:
            return {"error": sample["error"]}
    out: dict[str, Any] = {k: torch.stack([s[k] for s in batch]) for k in ("gt", "scored", "clip_pred", "clip_gt")}
    out.update({k: np.array([s[k] for s in batch]) for k in ("index", "psnr", "ssim", "grad", "color_error",
                                                                "hole_fraction")})
    return out


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in _VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def score(cfg: DictConfig, items: Sequence[Any], pred_paths: Sequence[Path]) -> tuple[dict, list[dict]]:
    """All metrics of ``pred_paths`` against ``items``: (results dict, per-image rows)."""
    from tqdm.auto import tqdm

    from asuka.data.datasets import EvalDataset

    m = cfg.metrics
    device = _device(cfg)
    seed = int(cfg.seed)
    res = int(cfg.resolution)
    use_composite = bool(m.composite)
    bins = area_bins(m.area_bins)

    extractor = feats_mod.build_inception(m.variant, m.weights, OmegaConf.select(cfg, "paths.inception"),
                                          device=device, seed=seed)
    lpips_model, lpips_info = build_lpips(str(m.lpips_net), m.weights, OmegaConf.select(cfg, "paths.lpips_dir"),
                                          device=device, seed=seed)
    cache_dir = m.get("cache_dir")
    n = len(items)
    # The mask file is part of the ground truth's content too: a centre-cropped image is resized to its mask's size.
    crops = sorted({bool(getattr(it, "center_crop", False)) for it in items})
    real_hash = feats_mod.hash_files([[it.image, it.mask] for it in items],
                                     extra={"set": "ground_truth", "center_crop": crops})
    fake_hash = feats_mod.hash_files([[it.image, it.mask, p] for it, p in zip(items, pred_paths)],
                                     extra={"set": "composite" if use_composite else "prediction",
                                            "mask_threshold": MASK_THRESHOLD, "center_crop": crops})
    real_set = feats_mod.FeatureSet(extractor, real_hash, res, n, cache_dir)
    fake_set = feats_mod.FeatureSet(extractor, fake_hash, res, n, cache_dir)

    clip_model, clip_info = (build_clip(m.weights, OmegaConf.select(cfg, "paths.clip"), device=device, seed=seed)
                             if "clip" in included_metrics(cfg) else (None, None))
    per_image = {k: np.full(n, np.nan) for k in ("lpips", "psnr", "ssim", "grad", "clip", "color_error",
                                                  "hole_fraction")}
    official = official_recipe(cfg)
    pairs = _ScoredPairs(EvalDataset(items, res, soft=official), pred_paths, items, use_composite, int(m.band),
                         official=official)
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=int(cfg.batch_size), shuffle=False, collate_fn=_collate,
        num_workers=resolve_num_workers(OmegaConf.select(cfg, "trainer.num_workers", default=0) or 0))
    for batch in tqdm(loader, desc="score", total=len(loader)):
        if "error" in batch:
            raise DataError(batch["error"])
        idx = batch["index"]
        for key in ("psnr", "ssim", "grad", "color_error", "hole_fraction"):
            per_image[key][idx] = batch[key]
        if clip_model is not None:
            per_image["clip"][idx] = clip_similarity(clip_model, batch["clip_pred"], batch["clip_gt"])
        per_image["lpips"][idx] = lpips_metric(lpips_model, batch["scored"], batch["gt"]).numpy()
        real_set.add(to_uint8(batch["gt"]))
        fake_set.add(to_uint8(batch["scored"]))
    real, fake = real_set.result(), fake_set.result()

    min_images = int(m.min_images_for_fid)
    pca_dim = ids_pca(cfg, m.variant)
    area = [bin_of(f, bins) for f in per_image["hole_fraction"]]
    domains = [getattr(it, "domain", None) for it in items]
    results = summarize(per_image, real, fake, area, domains, bins, min_images, pca_dim)

    desc = extractor.describe()
    results["meta"] = {
        "method": cfg.method.name, "dataset": cfg.dataset.get("name"), "image_count": n, "resolution": res,
        "variant": desc["variant"], "weights": m.weights, "inception_weights_file": desc["weights_file"],
        "inception_weights_sha256": desc["weights_sha256"], "resize_mode": desc["resize_mode"],
        "lpips": lpips_info, "clip": clip_info, "metrics_included": list(included_metrics(cfg)),
        "composite": use_composite, "mask_threshold": MASK_THRESHOLD,
        "seed": seed,
        "ids_pca": pca_dim, "min_images_for_fid": min_images, "band": int(m.band),
        "area_bins": [float(e) for e in m.area_bins],
        "num_inference_steps": int(cfg.num_inference_steps) if cfg.method.name != "predictions" else None,
        "feature_cache": {"dir": None if cache_dir is None else str(cache_dir), "ground_truth": real_set.key,
                          "ground_truth_hit": real_set.hit, "predictions": fake_set.key,
                          "predictions_hit": fake_set.hit},
        "device": str(device), "versions": _versions(), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if m.weights == "random":
        results["meta"]["warning"] = ("RANDOM WEIGHTS: Inception, LPIPS and CLIP are randomly initialised; these "
                                      "numbers only check the plumbing and are not metrics")
    rows = []
    for i, it in enumerate(items):
        rows.append({"name": item_key(it.name), "domain": domains[i], "hole_fraction": per_image["hole_fraction"][i],
                     "area_bin": area[i], "lpips": per_image["lpips"][i], "psnr": per_image["psnr"][i],
                     "ssim": per_image["ssim"][i], "grad": per_image["grad"][i], "clip": per_image["clip"][i],
                     "color_error": per_image["color_error"][i],
                     "prediction": str(pred_paths[i])})
    return results, rows
