"""Offline latent augmentation (paper eq. (1), spec 7) and its on-disk cache.

At inference the decoder gets latents the UNet generated, not latents of a real image: they carry the UNet's colour
and texture errors. The paper trains the decoder on such latents for half of the images, precomputed offline: a
one-step x0 estimate of the frozen SD-inpainting UNet at a large timestep, with nothing masked,

    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps
    z0_hat = (z_t - sqrt(1 - abar_t) eps_theta(z_t, t, m=0, z0, c)) / sqrt(abar_t)

with z0 = E(x) * scaling_factor, the UNet input ``[z_t, zeros mask, z0]`` (the masked-image latent of an unmasked
image is the image's own latent), t ~ U{t_min..t_max} (500..999, our choice) and c = zeros or the null prior.

The cache holds ``z0_hat / scaling_factor`` (the VAE latent space, what ``vae.encode(x)`` returns) for one FIXED
crop of every dataset image (:func:`fixed_crop`: centre square, resized to the training resolution, no flip), so the
decoder stage must use that same crop as its target and condition whenever it uses the cached latent.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from asuka.data.images import load_image, pil_to_tensor
from asuka.models.sd import encode_latents, unet_input
from asuka.utils.errors import AsukaError, ConfigError, DataError

INDEX_FILE = "index.json"
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


def item_randomness(seed: int, index: int, t_min: int, t_max: int, shape: tuple[int, ...]) -> tuple[int, torch.Tensor]:
    """Timestep and noise of one dataset item, from ``(seed, index)`` only: the same in any batch, rank or rerun."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2)
    gen = torch.Generator().manual_seed(int(state[0]) | (int(state[1]) << 32))
    t = int(torch.randint(int(t_min), int(t_max) + 1, (1,), generator=gen))
    return t, torch.randn(shape, generator=gen)


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
def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}.safetensors"


class LatentCache:
    """A folder of safetensors shards (``shard_00000.safetensors``: latents keyed by dataset index) + ``index.json``.

    ``index.json`` records the settings the latents were made with and maps indices to shards as ranges
    (``"shards": {"shard_00000.safetensors": [start, stop]}``, shard ``s`` holding indices ``[s*N, (s+1)*N)``),
    plus the indices whose image could not be read (``"missing"``). A shard file appears only complete (written to a
    temporary name, then renamed), so "the file exists" means "the shard is done": a rerun computes only missing
    shards. Reading is lazy (a few open shards at a time) and survives being pickled into dataloader workers.
    """

    def __init__(self, root: str | os.PathLike, max_open: int = 32) -> None:
        self.root = Path(root)
        self.max_open = max_open
        self.meta: dict[str, Any] | None = None
        self._missing: set[int] = set()
        self._open: OrderedDict[int, Any] = OrderedDict()

    # -- state for pickling: open handles stay behind
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    # -- writing
    def shard_path(self, shard: int) -> Path:
        return self.root / shard_name(shard)

    def num_shards(self, num_items: int, shard_size: int) -> int:
        return -(-num_items // shard_size)

    def shard_complete(self, shard: int) -> bool:
        return self.shard_path(shard).is_file()

    def write_shard(
        self, shard: int, latents: dict[int, torch.Tensor], start: int, stop: int, missing: list[int]
    ) -> None:
        """Write one shard atomically: a temporary file in the same folder, fsync, rename."""
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{shard_name(shard)}.{os.getpid()}"
        tensors = {str(i): v.detach().cpu().contiguous() for i, v in latents.items()}
        metadata = {"start": str(start), "stop": str(stop), "missing": json.dumps(sorted(missing))}
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates the file private; a shared cache must be readable
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.shard_path(shard))

    def shard_missing(self, shard: int) -> list[int]:
        from safetensors import safe_open

        with safe_open(str(self.shard_path(shard)), framework="pt") as fh:
            return json.loads((fh.metadata() or {}).get("missing", "[]"))

    def write_index(self, meta: dict[str, Any]) -> None:
        """Write ``index.json`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{INDEX_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, self.root / INDEX_FILE)
        self.meta = meta

    def read_index(self) -> dict[str, Any] | None:
        path = self.root / INDEX_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise AsukaError(f"{path}: unreadable latent-cache index ({exc})") from None

    # -- reading
    @classmethod
    def open(
        cls, root: str | os.PathLike, num_items: int | None = None, resolution: int | None = None
    ) -> "LatentCache":
        """Open a finished cache for training; AsukaError when it is missing, unfinished or made for other data."""
        cache = cls(root)
        meta = cache.read_index()
        hint = "run scripts/make_latent_aug.py first, or set decoder_train.latent_aug_prob=0"
        if meta is None:
            raise AsukaError(f"{cache.root / INDEX_FILE}: no latent-augmentation cache here ({hint})")
        if not meta.get("complete"):
            raise AsukaError(f"{cache.root}: the latent-augmentation cache is unfinished ({hint} to complete it)")
        if num_items is not None and int(meta["num_items"]) != int(num_items):
            raise AsukaError(
                f"{cache.root}: cache made for {meta['num_items']} images, the dataset has {num_items} ({hint})"
            )
        if resolution is not None and int(meta["resolution"]) != int(resolution):
            raise AsukaError(
                f"{cache.root}: cache made at resolution {meta['resolution']}, training uses {resolution} ({hint})"
            )
        cache.meta = meta
        cache._missing = set(int(i) for i in meta.get("missing", []))
        return cache

    def _handle(self, shard: int) -> Any:
        from safetensors import safe_open

        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        path = self.shard_path(shard)
        if not path.is_file():
            return None
        handle = safe_open(str(path), framework="pt")
        self._open[shard] = handle
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return handle

    def has(self, index: int) -> bool:
        meta = self.meta
        return meta is not None and 0 <= index < int(meta["num_items"]) and index not in self._missing

    def get(self, index: int) -> torch.Tensor | None:
        """The cached latent (float32, VAE space) of dataset item ``index``, or None if it has none."""
        if not self.has(index):
            return None
        handle = self._handle(index // int(self.meta["shard_size"]))
        if handle is None:
            return None
        try:
            return handle.get_tensor(str(index)).float()
        except Exception:  # key absent (an unreadable image): no latent
            return None


def pending_shards(cache: LatentCache, num_items: int, shard_size: int, rank: int, world_size: int) -> list[int]:
    """This rank's shards (``s % world_size == rank``) that are not on disk yet."""
    return [
        s for s in range(cache.num_shards(num_items, shard_size))
        if s % world_size == rank and not cache.shard_complete(s)
    ]


class ShardWriter:
    """Collects latents in index order and writes each shard the moment its last item has been seen."""

    def __init__(self, cache: LatentCache, num_items: int, shard_size: int, dtype: torch.dtype) -> None:
        self.cache, self.num_items, self.shard_size, self.dtype = cache, num_items, shard_size, dtype
        self._latents: dict[int, dict[int, torch.Tensor]] = {}
        self._missing: dict[int, list[int]] = {}
        self._seen: dict[int, int] = {}
        self.written: list[int] = []

    def _bounds(self, shard: int) -> tuple[int, int]:
        return shard * self.shard_size, min(self.num_items, (shard + 1) * self.shard_size)

    def add(self, index: int, latent: torch.Tensor | None) -> None:
        shard = index // self.shard_size
        if latent is None:
            self._missing.setdefault(shard, []).append(index)
        else:
            self._latents.setdefault(shard, {})[index] = latent.detach().to("cpu", self.dtype)
        self._seen[shard] = self._seen.get(shard, 0) + 1
        start, stop = self._bounds(shard)
        if self._seen[shard] == stop - start:
            self.cache.write_shard(shard, self._latents.pop(shard, {}), start, stop, self._missing.pop(shard, []))
            del self._seen[shard]
            self.written.append(shard)


class _FixedCropImages(torch.utils.data.Dataset):
    """The cache's view of the dataset: ``(index, fixed crop or None if unreadable)``."""

    def __init__(self, items: list, indices: list[int], resolution: int) -> None:
        self.items, self.indices, self.resolution = items, indices, resolution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        index = self.indices[i]
        try:
            return index, fixed_crop(load_image(self.items[index].image), self.resolution)
        except DataError:
            return index, None


def _keep_lists(batch: list) -> list:
    """DataLoader collate that keeps ``(index, image or None)`` pairs as they are."""
    return batch


def cache_settings(cfg: Any, num_items: int, latent_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a cache was made with; a rerun with other settings into the same folder is refused."""
    return {
        "version": CACHE_VERSION,
        "num_items": int(num_items),
        "shard_size": int(cfg.shard_size),
        "resolution": int(cfg.resolution),
        "latent_shape": list(latent_shape),
        "crop": FIXED_CROP,
        "latent_space": "VAE latent (z0_hat / scaling_factor), like vae.encode(x).latent_dist",
        "t_min": int(cfg.t_min),
        "t_max": int(cfg.t_max),
        "seed": int(cfg.seed),
        "condition": str(cfg.condition),
        "dtype": str(cfg.dtype),
    }


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


def build_latent_cache(cfg: Any) -> dict[str, Any]:
    """``scripts/make_latent_aug.py``: compute the missing shards of ``cfg.out`` on every rank, then the index.

    Resumable (finished shards are kept), rank-aware (shard s on rank s % world_size) and deterministic (each item's
    timestep and noise depend only on ``(seed, index)``).
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from asuka.data.sources import build_image_source
    from asuka.models.sd import load_sd_inpaint

    if int(cfg.t_min) < 0 or int(cfg.t_max) < int(cfg.t_min):
        raise ConfigError("t_min", f"need 0 <= t_min <= t_max, got {cfg.t_min}..{cfg.t_max}")
    if str(cfg.dtype) not in ("float16", "bfloat16", "float32"):
        raise ConfigError("dtype", f"must be float16, bfloat16 or float32, got {cfg.dtype!r}")
    state = PartialState(cpu=bool(cfg.get("cpu", False)))
    device = state.device
    items = build_image_source(cfg.dataset, "train")
    sd = load_sd_inpaint(cfg.model.sd, cfg.paths.sd_inpaint, device)
    if int(cfg.t_max) >= len(sd.scheduler.alphas_cumprod):
        raise ConfigError("t_max", f"must be < {len(sd.scheduler.alphas_cumprod)} (the scheduler's timesteps)")
    resolution = int(cfg.resolution)
    factor = 2 ** (len(sd.vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise ConfigError("resolution", f"must be divisible by {factor}")
    latent_shape = (int(sd.vae.config.latent_channels), resolution // factor, resolution // factor)
    cache = LatentCache(cfg.out)
    settings = cache_settings(cfg, len(items), latent_shape)
    existing = cache.read_index()
    if existing is not None:
        old = {k: existing.get(k) for k in settings}
        if old != settings:
            diff = sorted(k for k in settings if old[k] != settings[k])
            raise AsukaError(f"{cache.root}: a cache made with other settings ({', '.join(diff)}) is there; "
                             f"use another out= folder or delete it")
    state.wait_for_everyone()
    if state.is_main_process and (existing is None or existing.get("complete")):
        cache.write_index({**settings, "complete": False})
    state.wait_for_everyone()

    shard_size = int(cfg.shard_size)
    todo = pending_shards(cache, len(items), shard_size, state.process_index, state.num_processes)
    indices = [i for s in todo for i in range(s * shard_size, min(len(items), (s + 1) * shard_size))]
    loader = torch.utils.data.DataLoader(
        _FixedCropImages(items, indices, resolution),
        batch_size=int(cfg.batch_size),
        num_workers=int(cfg.get("num_workers", 0)),
        collate_fn=_keep_lists,
    )
    writer = ShardWriter(cache, len(items), shard_size, getattr(torch, str(cfg.dtype)))
    cond_one = latent_condition(cfg, 1, sd.unet, device)
    scaling = float(sd.vae.config.scaling_factor)
    bar = tqdm(
        total=len(indices), disable=not state.is_local_main_process, desc=f"latent aug (rank {state.process_index})"
    )
    with torch.no_grad():
        for batch in loader:
            good = [(i, x) for i, x in batch if x is not None]
            results: dict[int, torch.Tensor] = {}
            if good:
                pixels = torch.stack([x for _, x in good])
                z0 = encode_latents(sd.vae, pixels, sample_mode="mode").float()
                draws = [
                    item_randomness(int(cfg.seed), i, int(cfg.t_min), int(cfg.t_max), latent_shape) for i, _ in good
                ]
                t = torch.tensor([d[0] for d in draws], device=device)
                noise = torch.stack([d[1] for d in draws]).to(device)
                cond = cond_one.expand(len(good), -1, -1)
                z0_hat = one_step_estimate(sd.unet, sd.scheduler, z0, t, noise, cond) / scaling
                results = {i: z for (i, _), z in zip(good, z0_hat)}
            for index, _ in batch:
                writer.add(index, results.get(index))
            bar.update(len(batch))
    bar.close()
    state.wait_for_everyone()
    summary = {"written": len(writer.written), "out": str(cache.root)}
    if state.is_main_process:
        shards = cache.num_shards(len(items), shard_size)
        absent = [s for s in range(shards) if not cache.shard_complete(s)]
        if absent:
            raise AsukaError(f"{cache.root}: shards {absent[:5]} are missing after the build; rerun to complete them")
        missing = sorted(i for s in range(shards) for i in cache.shard_missing(s))
        ranges = {
            shard_name(s): [s * shard_size, min(len(items), (s + 1) * shard_size)] for s in range(shards)
        }
        cache.write_index({**settings, "complete": True, "shards": ranges, "missing": missing})
        summary.update(shards=shards, missing=len(missing))
    state.wait_for_everyone()
    return summary


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
        r = self.base.resolution
        mask = self.base.mask_generator(rng, r, r)
        mask = mask[0] if isinstance(mask, tuple) else mask
        mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return {"image": image, "mask": mask, "index": index, "bad": [], "latent": latent,
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
