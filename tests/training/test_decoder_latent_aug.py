"""Offline latent augmentation: eq. (1) against a hand computation, the sharded cache (build, resume after an
interruption, rank split, settings guard) and the stage-3 dataset that pairs cached latents with the fixed crop."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from safetensors.torch import load_file

from asuka.data.images import load_image
from asuka.models.sd import build_tiny_sd
from asuka.data.latent_cache import LatentCache, shard_name
from asuka.data.sharded_folder import INDEX_FILE, pending_shards
from asuka.training.latent_aug import (
    DecoderTrainDataset,
    build_latent_cache,
    fixed_crop,
    item_randomness,
    one_step_estimate,
    open_latent_aug_cache,
)
from asuka.utils.errors import AsukaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose_config  # noqa: E402


def cache_config(out: Path, *overrides: str):
    cfg = compose_config(
        "make_latent_aug",
        ["experiment=demo", f"out={out}", "shard_size=3", "batch_size=2", "num_workers=0", *overrides],
    )
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent_cache")
    cfg = cache_config(out)
    summary = build_latent_cache(cfg)
    return cfg, out, summary


def test_one_step_estimate_matches_hand_computation():
    sd = build_tiny_sd(0)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([500, 999])
    cond = torch.zeros(2, 77, 32)
    # SD's scaled_linear schedule, computed here without the scheduler
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)[t].float().view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * noise
    with torch.no_grad():
        eps = sd.unet(torch.cat([z_t, torch.zeros(2, 1, 8, 8), z0], dim=1), t, encoder_hidden_states=cond).sample
        expected = (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()
        got = one_step_estimate(sd.unet, sd.scheduler, z0, t, noise, cond)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, z0, atol=1e-2)  # the estimate is not the clean latent


def test_item_randomness_depends_only_on_seed_and_index():
    t1, n1 = item_randomness(0, 7, 500, 999, (4, 8, 8))
    t2, n2 = item_randomness(0, 7, 500, 999, (4, 8, 8))
    t3, n3 = item_randomness(0, 8, 500, 999, (4, 8, 8))
    assert t1 == t2 and torch.equal(n1, n2) and 500 <= t1 <= 999
    assert not torch.equal(n1, n3)


def test_cache_is_complete_and_matches_a_direct_computation(built):
    cfg, out, summary = built
    meta = json.loads((out / INDEX_FILE).read_text())
    n = meta["num_items"]
    assert meta["complete"] and n == 8 and summary["shards"] == 3 and meta["missing"] == []
    assert meta["shards"] == {shard_name(0): [0, 3], shard_name(1): [3, 6], shard_name(2): [6, 8]}
    assert sorted(p.name for p in out.glob("shard_*")) == [shard_name(s) for s in range(3)]
    cache = open_latent_aug_cache(out, n, 64)
    assert all(cache.get(i) is not None for i in range(n)) and cache.get(n) is None
    # item 4, recomputed from scratch
    from asuka.data.sources import build_image_source

    sd = build_tiny_sd(0)
    item = build_image_source(cfg.dataset, "train")[4]
    x = fixed_crop(load_image(item.image), 64)[None]
    sf = sd.vae.config.scaling_factor
    t, noise = item_randomness(0, 4, 500, 999, (4, 8, 8))
    with torch.no_grad():
        z0 = sd.vae.encode(x).latent_dist.mode() * sf
        expected = one_step_estimate(sd.unet, sd.scheduler, z0, torch.tensor([t]), noise[None], torch.zeros(1, 77, 32))
    assert torch.allclose(cache.get(4), (expected[0] / sf).half().float(), atol=1e-3)


def test_interrupted_build_completes_only_the_missing_shard(built):
    cfg, out, _ = built
    stat = {s: (out / shard_name(s)).stat().st_mtime_ns for s in range(3)}
    data = {s: (out / shard_name(s)).read_bytes() for s in range(3)}
    before = load_file(str(out / shard_name(1)))
    (out / shard_name(1)).unlink()  # as if the run died before writing shard 1
    summary = build_latent_cache(cfg)
    assert summary["written"] == 1
    for s in (0, 2):
        assert (out / shard_name(s)).stat().st_mtime_ns == stat[s]
        assert (out / shard_name(s)).read_bytes() == data[s]
    after = load_file(str(out / shard_name(1)))  # the same latents again (up to batch-composition rounding)
    assert after.keys() == before.keys()
    assert all(torch.allclose(after[k].float(), before[k].float(), atol=2e-3, rtol=1e-3) for k in after)
    assert json.loads((out / INDEX_FILE).read_text())["complete"]
    assert build_latent_cache(cfg)["written"] == 0  # nothing left to do


def test_rank_split_and_guards(built, tmp_path):
    cfg, out, _ = built
    empty = LatentCache(tmp_path / "empty")
    assert pending_shards(empty, 8, 3, rank=0, world_size=2) == [0, 2]
    assert pending_shards(empty, 8, 3, rank=1, world_size=2) == [1]
    assert pending_shards(LatentCache(out), 8, 3, rank=0, world_size=1) == []
    with pytest.raises(AsukaError, match="other settings.*t_min"):
        build_latent_cache(cache_config(out, "t_min=600"))
    with pytest.raises(AsukaError, match="make_latent_aug.py"):
        open_latent_aug_cache(tmp_path / "nowhere", 8, 64)
    with pytest.raises(AsukaError, match="resolution"):
        open_latent_aug_cache(out, 8, 256)
    unfinished = tmp_path / "unfinished"
    LatentCache(unfinished).write_index({"complete": False})
    with pytest.raises(AsukaError, match="unfinished"):
        open_latent_aug_cache(unfinished, 8, 64)


def _dataset(cfg, cache, latent_aug_prob, all_hole_prob):
    from asuka.data.datasets import TrainDataset, build_image_source
    from asuka.data.masks import build_mask_generator

    items = build_image_source(cfg.dataset, "train")
    base = TrainDataset(items, 64, build_mask_generator(cfg.mask, cfg.paths), 0)
    return DecoderTrainDataset(base, cache, latent_aug_prob, all_hole_prob, 0), items, base


def test_cached_samples_use_the_fixed_crop(built):
    _, out, _ = built
    cfg = compose_config("train_decoder", ["experiment=demo"])
    cache = LatentCache.open(out)
    ds, items, base = _dataset(cfg, cache, 1.0, 0.0)
    for index in range(len(ds)):
        sample = ds[(0, index)]
        assert bool(sample["use_latent"])
        assert torch.equal(sample["image"], fixed_crop(load_image(items[index].image), 64))
        assert torch.equal(sample["latent"], cache.get(index))
        assert sample["mask"].shape == (1, 64, 64) and 0 < sample["mask"].mean() < 1
    assert torch.equal(ds[(1, 2)]["mask"], ds[(1, 2)]["mask"])  # deterministic per (epoch, index)
    never, _, _ = _dataset(cfg, cache, 0.0, 0.0)
    sample = never[(0, 3)]
    assert not bool(sample["use_latent"]) and torch.equal(sample["image"], base[(0, 3)]["image"])
    holes, _, _ = _dataset(cfg, None, 0.0, 1.0)
    assert all(bool((holes[(0, i)]["mask"] == 1).all()) and "latent" not in holes[(0, i)] for i in range(3))
    batch = ds.collate([ds[(0, i)] for i in range(3)])
    assert batch["latent"].shape == (3, 4, 8, 8) and batch["use_latent"].dtype == torch.bool
