"""Stage 3 on the shared engine: what a batch becomes (colour augmentation touches only the latent's source), the
missing-cache guard, a short run with the run-folder contract, and an overfit that lowers the boundary colour error."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from asuka.data.color import boundary_color_error
from asuka.data.images import load_image
from asuka.models.decoder import AsukaDecoder, build_decoder
from asuka.models.sd import build_tiny_sd
from asuka.training.decoder import DecoderStage, train
from asuka.training.latent_aug import build_latent_cache, fixed_crop
from asuka.utils.errors import AsukaError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose_config  # noqa: E402
from resume_check import assert_resume_exact  # noqa: E402

FAST = [
    "experiment=demo",
    "decoder_train.lpips_pretrained_trunk=false",  # offline: random VGG trunk
    "decoder_train.disc_channels=8",
    "trainer.mixed_precision=no",
    "trainer.num_workers=0",
]


def stage_config(*overrides: str):
    cfg = compose_config("train_decoder", [*FAST, *overrides])
    with open_dict(cfg):
        cfg.pop("hydra")  # the engine saves the resolved config; Hydra's runtime keys exist only under @hydra.main
    return cfg


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latent_cache")
    cfg = compose_config("make_latent_aug", ["experiment=demo", f"out={out}", "num_workers=0", "batch_size=4"])
    with open_dict(cfg):
        cfg.pop("hydra")
    build_latent_cache(cfg)
    return out


@pytest.fixture(scope="module")
def stage(cache_dir):
    torch.manual_seed(0)
    return DecoderStage(stage_config(f"paths.latent_cache={cache_dir}"), torch.device("cpu"), torch.float32)


def _mixed_batch(stage):
    """A batch with both cached-latent and encoded samples."""
    ds = stage.train_dataset()
    samples = [ds[(0, i)] for i in range(len(ds))]
    used = [s for s in samples if bool(s["use_latent"])][:2]
    fresh = [s for s in samples if not bool(s["use_latent"])][:2]
    assert used and fresh
    batch = ds.collate(used + fresh)
    batch.pop("bad")
    return batch


def test_color_augmentation_changes_only_the_latent_source(stage):
    batch = _mixed_batch(stage)
    image, mask = batch["image"].clone(), batch["mask"].clone()
    torch.manual_seed(1)
    latents, use = stage.training_latents(batch)
    assert torch.equal(batch["image"], image) and torch.equal(batch["mask"], mask)
    assert torch.equal(latents[use], batch["latent"][use])  # cached latents pass through untouched
    # the others: the SD VAE encoding (posterior sample) of a per-sample colour-jittered copy, same RNG draws
    torch.manual_seed(1)
    need = (~use).nonzero().flatten()
    jittered = torch.stack([stage.jitter((image[i] + 1) / 2) for i in need]).clamp(0, 1) * 2 - 1
    with torch.no_grad():
        expected = stage.sd_vae.encode(jittered).latent_dist.sample()
    assert torch.allclose(latents[need], expected, atol=1e-6)
    with torch.no_grad():
        plain = stage.sd_vae.encode(image[need]).latent_dist.mode()
    assert (latents[need] - plain).abs().mean() > 1e-3  # the jitter did reach the latent

    # the decoder is conditioned on, and the loss compares with, the ORIGINAL image
    seen = {}
    decoder = stage.trainable["decoder"]
    hook = decoder.register_forward_pre_hook(lambda m, a, k: seen.update(sample=a[0], **k), with_kwargs=True)
    real_loss = stage.loss

    def recording_loss(target, recon, step, last_layer, disc):
        seen["target"] = target
        return real_loss(target, recon, step, last_layer, disc)

    stage.loss = recording_loss
    try:
        torch.manual_seed(1)
        out = stage.training_step(batch, 0)
    finally:
        hook.remove()
        stage.loss = real_loss
    assert torch.equal(seen["sample"], image) and torch.equal(seen["mask"], mask)
    assert torch.equal(seen["target"], image)
    assert torch.allclose(seen["latents"], latents, atol=1e-6)
    assert set(out.losses) == {"decoder", "discriminator"} and out.logs["latent_aug_frac"] == 0.5


def test_validation_rows_and_color_numbers(stage):
    batch = _mixed_batch(stage)
    result = stage.validate(batch)
    assert len(result.rows) == 5 and all(r.shape == (4, 3, 64, 64) for r in result.rows)
    assert set(result.logs) == {"boundary_de_sd_vae", "boundary_de_ours"}
    assert all(v > 0 for v in result.logs.values())


def test_missing_cache_fails_before_training(tmp_path):
    cfg = stage_config(f"paths.latent_cache={tmp_path / 'no_cache'}", "decoder_train.latent_aug_prob=0.5")
    with pytest.raises(AsukaError, match="make_latent_aug.py.*latent_aug_prob=0"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_short_run_and_run_folder(tmp_path, cache_dir):
    cfg = stage_config(
        f"paths.latent_cache={cache_dir}",
        "trainer.max_steps=3",
        "trainer.checkpoint_every=2",
        "trainer.val_every=3",
        "decoder_train.disc_start=1",
    )
    result = train(cfg, tmp_path)
    assert result["finished"] and result["step"] == 3
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in lines if "loss" in r]  # training steps; validation numbers are their own records
    assert [r["gan_active"] for r in records] == [0.0, 1.0, 1.0]  # optimizer steps 0, 1, 2; disc_start=1
    assert records[0]["loss_discriminator"] == 0 and records[1]["loss_discriminator"] > 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    for name in ("decoder", "discriminator"):
        assert (tmp_path / "checkpoints/checkpoint-3" / name / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "final").iterdir()) == ["decoder"]
    decoder = AsukaDecoder.from_pretrained(tmp_path / "final" / "decoder")
    assert decoder.config.up_block_out_channels == [8, 8, 16, 16]
    assert (tmp_path / "val" / "step_0000003.png").is_file()
    val = [r for r in lines if "val_boundary_de_ours" in r]
    assert [r["step"] for r in val] == [3] and val[0]["val_boundary_de_ours"] > 0


def test_decoder_resume_is_exact(tmp_path, cache_dir):
    """Interrupted after step 2 of 4 and resumed: the same weights as straight through, with the GAN active from
    step 2 (discriminator, its BatchNorm statistics and its optimizer are all in the checkpoint)."""
    cfg = stage_config(f"paths.latent_cache={cache_dir}", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                       "trainer.val_every=100", "decoder_train.disc_start=1")
    assert_resume_exact(cfg, DecoderStage, "decoder", tmp_path, stop_at=2)


@pytest.mark.slow
def test_overfit_one_image_lowers_boundary_color_error(tmp_path, repo):
    """A tiny decoder trained on one image decodes that image with a measurably smaller colour error at the hole
    boundary than at initialisation (from the SD VAE copy + a new condition encoder)."""
    data = tmp_path / "one"
    data.mkdir()
    shutil.copy(repo / "data" / "samples" / "scene_00.png", data / "scene_00.png")
    cfg = stage_config(
        "dataset=folder",
        f"dataset.root={data}",
        "decoder_train.latent_aug_prob=0",
        "decoder_train.all_hole_prob=0",
        "decoder_train.lpips_weight=0",
        "decoder_train.disc_start=100000",
        "optim.lr=2e-3",
        "optim.schedule=constant",
        "trainer.max_steps=40",
        "trainer.val_every=40",
        "trainer.checkpoint_every=40",
    )
    train(cfg, tmp_path / "run")

    vae = build_tiny_sd(0).vae.eval()
    before = build_decoder(cfg.model.decoder, vae).eval()
    after = AsukaDecoder.from_pretrained(tmp_path / "run" / "final" / "decoder").eval()
    image = fixed_crop(load_image(data / "scene_00.png"), 64)[None]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:44, 16:48] = 1
    with torch.no_grad():
        z = vae.encode(image).latent_dist.mode()
        err_before = boundary_color_error(before.decode(z, image=image, mask=mask).sample, image, mask).item()
        err_after = boundary_color_error(after.decode(z, image=image, mask=mask).sample, image, mask).item()
    print(f"boundary dE before {err_before:.2f}, after {err_after:.2f}")
    assert err_after < 0.6 * err_before, (err_before, err_after)
