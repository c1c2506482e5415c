"""Offline latent augmentation (paper eq. (1), spec 7) and its on-disk cache.

At inference the decoder gets latents the UNet generated, not latents of a real image: they carry the UNet's colour
and texture errors. The paper trains the decoder on such latents for half of the images, precomputed offline: a
one-step x0 estimate of the frozen SD-inpainting UNet at a large timestep, with nothing masked,

    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    z0_hat = (z_t - sqrt(1 - abar_t) eps_theta(z_t, t, m=0, z0, c)) / sqrt(abar_t)

with z0 = E(x) * scaling_factor, the UNet input ``[z_t, zeros mask, z0]`` (the masked-image latent of an unmasked
image is the image's own latent), t ~ U{t_min..t_max} (500..999, our choice) and c = zeros or the null prior.

For FLUX.1-Fill (``model=flux_*``) the estimate is one flow-matching step, ``x0_hat = x_sigma - sigma v(x_sigma,
sigma)`` with a zero mask, the full image as the fill condition, the null conditions and sigma ~ U[sigma_min,
sigma_max]; it costs ~28x SD's per image, so ``subset`` caches a seeded fraction of the images (the others are
recorded as having no latent and train on encoded latents).

The cache holds the raw AE latent (SD: ``z0_hat / scaling_factor``; FLUX: ``x0_hat / scale + shift``; what
``vae.encode(x)`` returns) for one FIXED crop of every dataset image (:func:`fixed_crop`: centre square, resized to the training resolution, no flip), so the
decoder stage must use that same crop as its target and condition whenever it uses the cached latent.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from asuka.data.images import load_image, pil_to_tensor
from asuka.data.latent_cache import LatentCache, build_sharded_cache
from asuka.models.sd import unet_input
from asuka.utils.errors import AsukaError, ConfigError, DataError
from asuka.utils.workers import resolve_num_workers

CACHE_VERSION = 1
FIXED_CROP = "center square, resized (bicubic, antialiased) to the resolution, no flip"


# ----------------------------------------------------------------------------------------------- eq. (1)
def one_step_estimate(
    unet: torch.nn.Module,
    scheduler: Any,
    z0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: torch.Tensor,
) -> torch.Tensor:
    """One-step x0 estimate of the frozen inpainting UNet with nothing masked (eq. (1)).

    ``z0`` are scaled latents ``[B, 4, h, w]`` (the UNet's space), ``t`` integer timesteps ``[B]``, ``noise`` like
    ``z0``, ``cond`` the cross-attention input ``[B, L, D]``. Computed in float32 except inside the UNet.
    ``v_prediction`` UNets are handled too (z0_hat = sqrt(abar) z_t - sqrt(1 - abar) v).
    """
    z0 = z0.float()
    abar = scheduler.alphas_cumprod.to(device=z0.device, dtype=torch.float32)[t.to(z0.device).long()]
    abar = abar.view(-1, 1, 1, 1)
    sqrt_a, sqrt_1a = abar.sqrt(), (1.0 - abar).sqrt()
    z_t = sqrt_a * z0 + sqrt_1a * noise.float()
    mask_latent = torch.zeros_like(z0[:, :1])
    model_in = unet_input(z_t, mask_latent, z0).to(unet.dtype)
    out = unet(model_in, t.to(z0.device), encoder_hidden_states=cond.to(device=z0.device, dtype=unet.dtype)).sample
    out = out.float()
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction == "epsilon":
        return (z_t - sqrt_1a * out) / sqrt_a
    if prediction == "v_prediction":
        return sqrt_a * z_t - sqrt_1a * out
    raise AsukaError(f"latent augmentation: unsupported scheduler prediction_type '{prediction}'")


def _item_generator(seed: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) | (int(state[1]) << 32))


def item_randomness(seed: int, index: int, t_min: int, t_max: int, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
    """Timestep and noise of one dataset item, from ``(seed, index)`` only: the same in any batch, rank or rerun."""
    gen = _item_generator(seed, index)
    t = int(torch.randint(int(t_min), int(t_max) + 1, (1,), generator=gen))
    return t, torch.randn(shape, generator=gen)


def item_sigma(seed: int, index: int, sigma_min: float, sigma_max: float,
               shape: tuple[int, ...]) -> tuple[float, torch.Tensor]:
    """FLUX: sigma ~ U[sigma_min, sigma_max] and noise of one dataset item, from ``(seed, index)`` only."""
    gen = _item_generator(seed, index)
    u = float(torch.rand((1,), generator=gen))
    return sigma_min + (sigma_max - sigma_min) * u, torch.randn(shape, generator=gen)


def in_subset(seed: int, index: int, fraction: float) -> bool:
    """Whether item ``index`` is in the cached subset (``subset`` = fraction of the images; seeded, rank-free)."""
    return fraction >= 1.0 or np.random.default_rng([int(seed), int(index), 5]).random() < fraction


def fixed_crop(img: Image.Image, resolution: int) -> torch.Tensor:
    """THE crop the cache is computed on: the centre square, resized to ``resolution``; ``[3, R, R]`` in [-1, 1]."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC, reducing_gap=None)
    return pil_to_tensor(img)


# ------------------------------------------------------------------------------------------------- cache
OPEN_HINT = "run scripts/make_latent_aug.py first, or set decoder_train.latent_aug_prob=0"


def _cache_backbone(backbone: Any) -> str | None:
    """The backbone a cache records: None for SD-1.5 (its caches predate the key), else the backbone's name."""
    return None if backbone is None or backbone.name == "sd15_inpaint" else backbone.name


def open_latent_aug_cache(root: str | os.PathLike, num_items: int, resolution: int,
                          backbone: Any = None) -> LatentCache:
    """The finished cache at ``root`` made for a dataset of ``num_items`` images at ``resolution`` with the latents
    of ``backbone`` (default SD-1.5)."""
    expect = {"num_items": int(num_items), "resolution": int(resolution), "backbone": _cache_backbone(backbone)}
    return LatentCache.open(root, expect, hint=OPEN_HINT, what="latent-augmentation cache")


def _load_fixed_crop(items: list, resolution: int, index: int, keep: Any = None) -> torch.Tensor | None:
    """The cache's view of dataset item ``index``: its fixed crop, or None if the image is unreadable or
    ``keep(index)`` leaves it out of the subset."""
    if keep is not None and not keep(index):
        return None
    try:
        return fixed_crop(load_image(items[index].image), resolution)
    except DataError:
        return None


def cache_settings(cfg: Any, num_items: int, latent_shape: tuple[int, ...], estimate: dict[str, Any]) -> dict:
    """What a cache was made with (``estimate``: the backbone's own settings); a rerun with other settings into the
    same folder is refused."""
    settings = {
        "version": CACHE_VERSION,
        "num_items": int(num_items),
        "shard_size": int(cfg.shard_size),
        "resolution": int(cfg.resolution),
        "latent_shape": list(latent_shape),
        "crop": FIXED_CROP,
        **estimate,
        "seed": int(cfg.seed),
        "dtype": str(cfg.dtype),
    }
    if float(cfg.get("subset", 1.0)) < 1.0:
        settings["subset"] = float(cfg.subset)
    return settings


def latent_condition(cfg: Any, batch_size: int, unet: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """``condition``: zeros ``[B, 77, cross_attention_dim]``, or the null prior (the alignment of an all-masked
    input, through the frozen stage-1 MAE of ``paths.mae``) when ``null_prior`` and ``paths.alignment`` is set."""
    kind = str(cfg.condition)
    dim = int(unet.config.cross_attention_dim)
    if kind == "zeros":
        return torch.zeros(batch_size, 77, dim, device=device)
    if kind != "null_prior":
        raise ConfigError("condition", f"unknown latent-augmentation condition '{kind}' (zeros | null_prior)")
    from asuka.models.alignment import AlignmentModule, null_condition
    from asuka.models.mae_import import load_frozen_mae

    path = cfg.paths.get("alignment")
    if not path or not Path(str(path)).is_dir():
        raise AsukaError(f"{path}: condition=null_prior needs a trained alignment module (paths.alignment)")
    alignment = AlignmentModule.from_pretrained(str(path)).to(device).eval()
    mae = load_frozen_mae(cfg).to(device)
    with torch.no_grad():
        return null_condition(mae, alignment, batch_size, device=device, dtype=torch.float32)


Compute = Callable[[list[tuple[int, torch.Tensor]]], list[torch.Tensor]]


def _sd_estimates(cfg: Any, backbone: Any, sd: Any, device: torch.device,
                  latent_shape: tuple[int, ...]) -> tuple[Compute, dict[str, Any]]:
    """SD-1.5: eq. (1) at t ~ U{t_min..t_max}, stored / scaling_factor."""
    from asuka.models.sd import encode_latents

    if int(cfg.t_max) >= len(sd.scheduler.alphas_cumprod):
        raise ConfigError("t_max", f"must be < {len(sd.scheduler.alphas_cumprod)} (the scheduler's timesteps)")
    cond_one = latent_condition(cfg, 1, sd.unet, device)
    scaling = float(sd.vae.config.scaling_factor)

    def compute(good: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        z0 = encode_latents(sd.vae, torch.stack([x for _, x in good]), sample_mode="mode").float()
        draws = [item_randomness(int(cfg.seed), i, int(cfg.t_min), int(cfg.t_max), latent_shape) for i, _ in good]
        t = torch.tensor([d[0] for d in draws], device=device)
        noise = torch.stack([d[1] for d in draws]).to(device)
        cond = cond_one.expand(len(good), -1, -1)
        return list(one_step_estimate(sd.unet, sd.scheduler, z0, t, noise, cond) / scaling)

    return compute, {"latent_space": "VAE latent (z0_hat / scaling_factor), like vae.encode(x).latent_dist",
                     "t_min": int(cfg.t_min), "t_max": int(cfg.t_max), "condition": str(cfg.condition)}


def _flux_estimates(cfg: Any, backbone: Any, comps: Any, device: torch.device,
                    latent_shape: tuple[int, ...]) -> tuple[Compute, dict[str, Any]]:
    """FLUX.1-Fill: one flow-matching step at sigma ~ U[sigma_min, sigma_max], zero mask, the full image as the fill
    condition (AE mode), null conditions; stored as raw AE latents ``x0_hat / scale + shift``."""
    from asuka.models.backbones import flux
    from asuka.training.conditions import load_null_conditions

    lo, hi = float(cfg.sigma_min), float(cfg.sigma_max)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError("sigma_min", f"need 0 < sigma_min <= sigma_max <= 1, got {lo}..{hi}")
    txt, vec = (n.to(device) for n in load_null_conditions(cfg, backbone, comps, cfg.null_conditions,
                                                            "null_conditions"))
    vae, resolution = comps.vae, int(cfg.resolution)

    def compute(good: list[tuple[int, torch.Tensor]]) -> list[torch.Tensor]:
        image = torch.stack([x for _, x in good]).to(device)
        z0 = flux.pack(flux.encode_latents(vae, image, sample_mode="mode")).float()
        fill = flux.fill_condition(vae, image, torch.zeros_like(image[:, :1]), sample_mode="mode")
        draws = [item_sigma(int(cfg.seed), i, lo, hi, tuple(z0.shape[1:])) for i, _ in good]
        sigma = torch.tensor([d[0] for d in draws], device=device)
        noise = torch.stack([d[1] for d in draws]).to(device)
        ids = flux.image_ids(vae, resolution, resolution, device, comps.transformer.dtype)
        b = len(good)
        x0_hat = flux.one_step_estimate(comps.transformer, z0, fill, sigma, noise, txt.expand(b, -1, -1),
                                        vec.expand(b, -1), ids, float(cfg.guidance))
        return list(flux.to_ae_space(vae, flux.unpack(x0_hat, resolution, resolution, vae)).float())

    return compute, {"backbone": backbone.name, "latent_space": "raw AE latent (x0_hat / scale + shift)",
                     "sigma_min": lo, "sigma_max": hi, "guidance": float(cfg.guidance),
                     "condition": str(cfg.null_conditions)}


# The one-step estimate of each backbone (model.backbone).
ESTIMATES = {"sd15_inpaint": _sd_estimates, "flux_fill": _flux_estimates}


def build_latent_cache(cfg: Any) -> dict[str, Any]:
    """``scripts/make_latent_aug.py``: compute the missing shards of ``cfg.out`` on every rank, then the index.

    Resumable (finished shards are kept), rank-aware (shard s on rank s % world_size) and deterministic (each item's
    timestep/sigma and noise depend only on ``(seed, index)``); ``subset`` < 1 caches that seeded fraction only.
    """
    from accelerate import PartialState

    from asuka.data.sources import build_image_source
    from asuka.models.backbones import backbone_for
    from asuka.models.frozen import resolve_dtype
    from asuka.models.sd import latent_side
    from asuka.training.conditions import check_null_conditions
    from asuka.training.validate import check_fraction

    if int(cfg.t_min) < 0 or int(cfg.t_max) < int(cfg.t_min):
        raise ConfigError("t_min", f"need 0 <= t_min <= t_max, got {cfg.t_min}..{cfg.t_max}")
    subset = check_fraction(cfg.get("subset", 1.0), "subset")
    storage = resolve_dtype(cfg.dtype, "dtype")
    backbone = backbone_for(cfg.model)
    check_null_conditions(cfg, backbone, cfg.get("null_conditions", "released"), "null_conditions")
    state = PartialState(cpu=bool(cfg.get("cpu", False)))
    device = state.device
    items = build_image_source(cfg.dataset, "train")
    comps = backbone.load(cfg.model[backbone.config_key], cfg.paths.get(backbone.paths_key), device)
    resolution = int(cfg.resolution)
    side = latent_side(comps.vae, resolution)
    latent_shape = (int(comps.vae.config.latent_channels), side, side)
    compute, estimate = ESTIMATES[backbone.name](cfg, backbone, comps, device, latent_shape)
    keep = partial(in_subset, int(cfg.seed), fraction=subset) if subset < 1.0 else None

    return build_sharded_cache(
        cfg.out,
        cache_settings(cfg, len(items), latent_shape, estimate),
        len(items),
        partial(_load_fixed_crop, items, resolution, keep=keep),
        compute,
        shard_size=int(cfg.shard_size),
        batch_size=int(cfg.batch_size),
        num_workers=resolve_num_workers(cfg.get("num_workers", 0)),
        dtype=storage,
        state=state,
        desc="latent aug",
    )


# -------------------------------------------------------------------------------------- stage-3 dataset
class DecoderTrainDataset(torch.utils.data.Dataset):
    """The stage-3 training set: the shared ``TrainDataset`` plus, per sample, the choice of a cached
    latent-augmentation latent and of an all-hole mask.

    When a sample uses its cached latent, its image is THE crop the latent was made from (:func:`fixed_crop`), so
    target, condition and latent agree; otherwise it is the base dataset's random crop (and the stage encodes a
    colour-jittered copy). The choices come from ``(seed, epoch, index)`` (a stream separate from the base
    dataset's), so they do not depend on workers or ranks. Adds ``"latent"`` and ``"use_latent"`` when a cache is
    given.
    """

    def __init__(self, base: Any, cache: LatentCache | None, latent_aug_prob: float, all_hole_prob: float,
                 seed: int) -> None:
        self.base, self.cache = base, cache
        self.latent_aug_prob, self.all_hole_prob, self.seed = float(latent_aug_prob), float(all_hole_prob), int(seed)
        self.latent_shape = tuple(cache.meta["latent_shape"]) if cache is not None else None

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        from asuka.data.datasets import collate

        return collate(batch)

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch, index, 3])))

    def _cached_sample(self, index: int, rng: np.random.Generator) -> dict[str, Any] | None:
        latent = self.cache.get(index)
        if latent is None:
            return None
        try:
            image = fixed_crop(load_image(self.base.items[index].image), self.base.resolution)
        except DataError:
            return None
        return {"image": image, "mask": self.base.draw_mask(rng), "index": index, "bad": [], "latent": latent,
                "use_latent": torch.tensor(True)}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, (tuple, list)) else (self.base.epoch, key)
        epoch, index = int(epoch), int(index)
        rng = self._rng(epoch, index)
        use_cache = rng.random() < self.latent_aug_prob
        all_hole = rng.random() < self.all_hole_prob
        sample = None
        if use_cache and self.cache is not None and self.cache.has(index):
            sample = self._cached_sample(index, rng)
        if sample is None:
            sample = dict(self.base[(epoch, index)])
            if self.cache is not None:
                sample["latent"] = torch.zeros(self.latent_shape)
                sample["use_latent"] = torch.tensor(False)
        if all_hole:
            sample["mask"] = torch.ones_like(sample["mask"])
        return sample
