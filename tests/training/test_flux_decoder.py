"""Stage 3 for FLUX.1-Fill (model=flux_tiny): the latent-augmentation cache (one FLUX-Fill step, checked against an
independent computation; subset; resumable; refused by the other backbone), the 16-channel decoder initialised from
the FLUX AE, starting from a converted decoder folder, and exact resume."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose_config  # noqa: E402
from resume_check import assert_resume_exact  # noqa: E402

from asuka.data.images import load_image  # noqa: E402
from asuka.data.sources import build_image_source  # noqa: E402
from asuka.models.backbones import backbone_for  # noqa: E402
from asuka.models.backbones.flux import build_tiny_flux  # noqa: E402
from asuka.pipelines.build_flux import flux_conditions  # noqa: E402
from asuka.training.decoder import DecoderStage  # noqa: E402
from asuka.training.latent_aug import (  # noqa: E402
    build_latent_cache,
    fixed_crop,
    in_subset,
    item_sigma,
    open_latent_aug_cache,
)
from asuka.utils.errors import AsukaError  # noqa: E402

DECODER = ["experiment=demo", "model=flux_tiny", "decoder_train.lpips_pretrained_trunk=false",
           "decoder_train.disc_channels=8", "trainer.num_workers=0"]


def _plain(cfg):
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


def cache_config(out: Path, *overrides: str):
    return _plain(compose_config("make_latent_aug", ["experiment=demo", "model=flux_tiny", f"out={out}",
                                                     "num_workers=0", "batch_size=4", "shard_size=4",
                                                     "dtype=float32", *overrides]))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flux_cache")
    summary = build_latent_cache(cache_config(out))
    assert summary["shards"] == 2 and summary["missing"] == 0
    return out


def _pack(x: torch.Tensor) -> torch.Tensor:
    """BFL's ``b c (h 2) (w 2) -> b (h w) (c 2 2)``, written out here."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = x.shape
    return x.reshape(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def test_cached_latent_is_one_flux_fill_step(cache_dir):
    """Item 5: x0_hat = x_sigma - sigma v(x_sigma) with a zero mask, the image as the fill condition and the null
    conditions, back to raw AE latents; recomputed here from the diffusers modules."""
    cfg = cache_config(cache_dir)
    comps = build_tiny_flux(0)
    vae, tr = comps.vae, comps.transformer
    item = build_image_source(cfg.dataset, "train")[5]
    image = fixed_crop(load_image(item.image), 64)[None]
    z = vae.encode(image).latent_dist.mode()
    x0 = _pack((z - 0.1159) * 0.3611)
    fill = torch.cat([x0, torch.zeros(1, x0.shape[1], 256)], dim=2)  # zero mask: 8x8 pixel blocks packed 2x2
    sigma, noise = item_sigma(0, 5, 0.5, 1.0, tuple(x0.shape[1:]))
    x_s = (1 - sigma) * x0 + sigma * noise[None]
    null = flux_conditions(cfg, "asuka", backbone_for(cfg.model).condition_shapes(comps), True)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    ids = torch.stack([torch.zeros(16), rows.flatten(), cols.flatten()], dim=1)
    with torch.no_grad():
        v = tr(hidden_states=torch.cat([x_s, fill], dim=2), timestep=torch.tensor([sigma]),
               guidance=torch.tensor([30.0]), pooled_projections=null.vec, encoder_hidden_states=null.txt,
               txt_ids=torch.zeros(null.txt.shape[1], 3), img_ids=ids, return_dict=False)[0]
    expected = _unpack(x_s - sigma * v, 8, 8) / 0.3611 + 0.1159
    cache = open_latent_aug_cache(cache_dir, 8, 64, backbone_for(cfg.model))
    assert cache.meta["latent_shape"] == [16, 8, 8] and cache.meta["backbone"] == "flux_fill"
    torch.testing.assert_close(cache.get(5), expected[0], atol=1e-4, rtol=1e-4)


def test_cache_is_resumable_and_refused_by_the_sd_decoder(cache_dir):
    assert build_latent_cache(cache_config(cache_dir))["written"] == 0
    with pytest.raises(AsukaError, match="backbone"):
        open_latent_aug_cache(cache_dir, 8, 64)  # the SD-1.5 decoder stage's expectation
    with pytest.raises(AsukaError, match="other settings"):
        build_latent_cache(cache_config(cache_dir, "sigma_min=0.7"))


def test_subset_caches_a_seeded_fraction(tmp_path):
    summary = build_latent_cache(cache_config(tmp_path / "c", "subset=0.5"))
    cache = open_latent_aug_cache(tmp_path / "c", 8, 64, backbone_for(compose_config("train_decoder",
                                                                                      DECODER).model))
    kept = [i for i in range(8) if in_subset(0, i, 0.5)]
    assert [i for i in range(8) if cache.has(i)] == kept and summary["missing"] == 8 - len(kept)
    assert 0 < len(kept) < 8


def test_decoder_starts_from_the_flux_ae_decoder_and_freezes_its_encoder(cache_dir):
    torch.manual_seed(0)
    stage = DecoderStage(_plain(compose_config("train_decoder", [*DECODER, f"paths.latent_cache={cache_dir}"])),
                         torch.device("cpu"), torch.float32)
    decoder, ae = stage.trainable["decoder"], build_tiny_flux(0).vae
    assert int(decoder.config.latent_channels) == 16
    ours, theirs = decoder.state_dict(), ae.state_dict()
    copied = [k for k in theirs]
    assert all(torch.equal(ours[k], theirs[k]) for k in copied)  # encoder + decoder main path, no quant convs
    assert not any(k.startswith(("quant_conv", "post_quant_conv")) for k in ours)
    assert not any(p.requires_grad for p in decoder.encoder.parameters())
    batch = stage.train_dataset().collate([stage.train_dataset()[(0, i)] for i in range(4)])
    batch.pop("bad")
    latents, use = stage.training_latents(batch)
    assert latents.shape == (4, 16, 8, 8) and torch.equal(latents[use], batch["latent"][use])


def test_decoder_init_from_a_converted_folder(tmp_path, cache_dir):
    torch.manual_seed(0)
    cfg = _plain(compose_config("train_decoder", [*DECODER, f"paths.latent_cache={cache_dir}"]))
    first = DecoderStage(cfg, torch.device("cpu"), torch.float32).trainable["decoder"]
    with torch.no_grad():
        first.decoder.conv_out.bias.add_(1.0)  # differs from the AE-initialised decoder
    first.save_pretrained(tmp_path / "decoder")
    with open_dict(cfg):
        cfg.paths.decoder_init = str(tmp_path / "decoder")
    loaded = DecoderStage(cfg, torch.device("cpu"), torch.float32).trainable["decoder"]
    assert torch.equal(loaded.decoder.conv_out.bias, first.decoder.conv_out.bias)


def test_flux_decoder_resume_is_exact(tmp_path, cache_dir):
    cfg = _plain(compose_config("train_decoder", [*DECODER, f"paths.latent_cache={cache_dir}", "trainer.max_steps=4",
                                                  "trainer.checkpoint_every=2", "trainer.val_every=100",
                                                  "trainer.batch_size=2"]))
    assert_resume_exact(cfg, DecoderStage, "decoder", tmp_path, stop_at=2)
