"""Precomputed VAE latents for stage 2: ``scripts/make_align_latents.py`` and the dataset that reads them.

An alignment step encodes two 512 px images with the frozen VAE encoder (the image, the diffusion target, and the
masked image, the UNet's condition), about 1.1 TFLOP each: more than the UNet's forward. Both depend only on the
sample's crop and mask, so they can be computed once. The cache holds, for every training index, the encoder's
posterior moments ``(mean, logvar)`` of the epoch-0 sample ``TrainDataset[(0, index)]`` (its crop, flip and mask)
and of its masked image; training with ``paths.align_latents`` set reads them, draws the posterior sample as
``vae.encode(x).latent_dist.sample()`` would, and skips both encodes.

The price: every epoch shows each image with its epoch-0 crop and mask. At the defaults (20K steps, 8 per GPU on
8 GPUs: 1.28M samples) stage 2 sees less than one Places2 epoch (1.8M images), so nothing repeats.
"""
from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from omegaconf import OmegaConf

from asuka.data.datasets import TrainDataset, build_train_dataset
from asuka.data.latent_cache import LatentCache, build_sharded_cache
from asuka.models.frozen import resolve_dtype
from asuka.models.sd import latent_side, load_sd_inpaint, masked_image
from asuka.utils.errors import ConfigError, DataError
from asuka.utils.workers import resolve_num_workers

CACHE_VERSION = 1
CONTENT = "stage-2 VAE posterior moments: cat(mean, logvar) of E(x) and of E(masked x), epoch-0 samples"
OPEN_HINT = "build it with scripts/make_align_latents.py and the same overrides, or set paths.align_latents=null"


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _vae_identity(sd_cfg: Any, path: Any) -> str:
    """The frozen VAE, by its weights' name (a hub id or folder name: a copy elsewhere on a cluster still matches)."""
    source = str(sd_cfg.get("source", "pretrained"))
    return f"tiny, seed {sd_cfg.get('seed', 0)}" if source == "tiny" else f"{source}: {Path(str(path)).name}"


def files_fingerprint(base: TrainDataset) -> str:
    """sha256 of the training images' paths relative to their common folder, in dataset order: the same files in
    the same order, wherever the dataset was copied to."""
    paths = [str(item.image) for item in base.items]
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return hashlib.sha256("\n".join(os.path.relpath(p, root) for p in paths).encode()).hexdigest()


def data_identity(cfg: Any, base: TrainDataset) -> dict[str, Any]:
    """Everything the cached latents depend on, from a stage-2 config and its training set: training refuses a
    cache that differs in any of it."""
    return {
        "version": CACHE_VERSION,
        "content": CONTENT,
        "num_items": len(base),
        "files": files_fingerprint(base),
        "resolution": int(cfg.resolution),
        "seed": int(cfg.seed),
        "dataset": str(cfg.dataset.name),
        "mask": _plain(cfg.mask),
        "object_shapes": [_plain(cfg.paths.get("coco_instances")), _plain(cfg.paths.get("object_masks"))],
        "vae": _vae_identity(cfg.model.sd, cfg.paths.sd_inpaint),
    }


def posterior_moments(vae: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``cat(mean, logvar)`` ``[B, 2C, h, w]`` of the VAE encoder's posterior of ``image`` in [-1, 1] (float32)."""
    dist = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return torch.cat([dist.mean, dist.logvar], dim=1).float()


def sample_cached_latents(moments: torch.Tensor, scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior samples ``(image latents, masked-image latents)`` from cached moments ``[B, 4C, h, w]``,
    drawn as the VAE's own ``DiagonalGaussianDistribution.sample()`` draws them (float32)."""
    image, masked = moments.float().chunk(2, dim=1)
    return (
        DiagonalGaussianDistribution(image).sample() * scaling_factor,
        DiagonalGaussianDistribution(masked).sample() * scaling_factor,
    )


def open_align_latents(cfg: Any, base: TrainDataset) -> LatentCache:
    """The finished cache at ``paths.align_latents``, made for exactly this config's training samples."""
    root = os.path.expanduser(str(cfg.paths.align_latents))
    return LatentCache.open(root, data_identity(cfg, base), OPEN_HINT, "stage-2 latent cache")


class CachedAlignDataset(torch.utils.data.Dataset):
    """Stage-2 samples with their cached moments: ``base[(0, index)]`` (the sample the moments were computed from,
    rebuilt on the CPU: the MAE prior needs its pixels) plus ``"moments"`` ``[4C, h, w]``, for every epoch."""

    def __init__(self, base: TrainDataset, cache: LatentCache) -> None:
        self.base, self.cache = base, cache

    collate = staticmethod(TrainDataset.collate)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index = int(key[1] if isinstance(key, (tuple, list)) else key)
        moments = self.cache.get(index)
        if moments is None:
            raise DataError(f"{self.cache.root}: no cached latents for training index {index} (rebuild the cache)")
        return {**self.base[(0, index)], "moments": moments}


def _epoch0_sample(base: TrainDataset, index: int) -> dict[str, Any] | None:
    try:
        return base[(0, index)]
    except DataError:
        return None


def build_align_latents(cfg: Any) -> dict[str, Any]:
    """``scripts/make_align_latents.py``: the moments of every epoch-0 sample of the stage-2 config ``cfg``, into
    ``paths.align_latents``. Resumable (finished shards are kept) and multi-process (shard s on rank s % world)."""
    from accelerate import PartialState

    out = cfg.paths.get("align_latents")
    if not out:
        raise ConfigError("paths.align_latents", "where to write the cache is not set")
    storage, vae_dtype = resolve_dtype(cfg.dtype, "dtype"), resolve_dtype(cfg.vae_dtype, "vae_dtype")
    state = PartialState(cpu=bool(cfg.trainer.get("cpu", False)))
    base = build_train_dataset(cfg)
    vae = load_sd_inpaint(cfg.model.sd, cfg.paths.sd_inpaint, state.device, vae_dtype, parts=("vae",)).vae
    side = latent_side(vae, cfg.resolution)
    settings = {
        **data_identity(cfg, base),
        "shard_size": int(cfg.shard_size),
        "dtype": str(cfg.dtype),
        "vae_dtype": str(cfg.vae_dtype),
        "moments_shape": [4 * int(vae.config.latent_channels), side, side],
    }

    def compute(good: list[tuple[int, dict[str, Any]]]) -> list[torch.Tensor]:
        image = torch.stack([sample["image"] for _, sample in good])
        mask = torch.stack([sample["mask"] for _, sample in good])
        both = torch.cat([posterior_moments(vae, image), posterior_moments(vae, masked_image(image, mask))], dim=1)
        return list(both)

    return build_sharded_cache(
        os.path.expanduser(str(out)),
        settings,
        len(base),
        partial(_epoch0_sample, base),
        compute,
        shard_size=int(cfg.shard_size),
        batch_size=int(cfg.batch_size),
        num_workers=resolve_num_workers(cfg.num_workers),
        dtype=storage,
        state=state,
        desc="stage-2 latents",
    )
