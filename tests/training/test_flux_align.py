"""Stage 2 for FLUX.1-Fill (model=flux_tiny): what trains, the flow-matching loss against an independent computation,
sigma sampling, null conditions and dropout, initialising from converted released heads, resume and bad images."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose_config  # noqa: E402
from resume_check import assert_resume_exact, final_weights  # noqa: E402
from test_reliability import folder_with_broken_images  # noqa: E402

from asuka.data.datasets import collate  # noqa: E402
from asuka.models.backbones.flux import sample_sigmas  # noqa: E402
from asuka.training.align import AlignStage  # noqa: E402
from asuka.training.conditions import blend_with_null  # noqa: E402
from asuka.training.engine import fit  # noqa: E402
from asuka.utils.errors import AsukaError, ConfigError  # noqa: E402

FLUX = ["experiment=demo", "model=flux_tiny"]


def flux_config(*overrides: str):
    cfg = compose_config("train_align", [*FLUX, *overrides])
    with open_dict(cfg):
        cfg.pop("hydra")
    return cfg


@pytest.fixture(scope="module")
def stage_and_batch():
    torch.manual_seed(0)
    stage = AlignStage(flux_config(), torch.device("cpu"), torch.float32)
    return stage, collate([stage.train_dataset()[(0, i)] for i in range(2)])


def test_only_the_two_heads_train_and_gradients_cross_the_frozen_transformer(stage_and_batch):
    stage, batch = stage_and_batch
    assert sorted(stage.trainable) == ["alignment", "alignment_clip"]
    assert stage.frozen.transformer.gradient_checkpointing  # align.gradient_checkpointing=auto: on for FLUX
    frozen = [stage.frozen.transformer, stage.frozen.vae, stage.mae]
    loss = stage.training_step(batch, step=0).losses["alignment"]
    loss.backward()
    for head in stage.trainable.values():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        head.zero_grad(set_to_none=True)
    assert all(not p.requires_grad and p.grad is None for m in frozen for p in m.parameters())


def test_sd_keeps_gradient_checkpointing_off_by_default():
    cfg = compose_config("train_align", ["experiment=demo"])
    stage = AlignStage(cfg, torch.device("cpu"), torch.float32)
    assert not stage.frozen.unet.is_gradient_checkpointing


def test_flow_matching_loss_equals_an_independent_computation(stage_and_batch):
    """The step's loss = mse(v(x_sigma), noise - x0) computed here directly on the diffusers transformer, with the
    same RNG draws in the same order (prior swap, AE samples, dropout, noise, sigma)."""
    stage, batch = stage_and_batch
    torch.manual_seed(3)
    got = stage.training_step(batch, step=5000).losses["alignment"]
    torch.manual_seed(3)
    prior, inputs, _ = stage._frozen_inputs(batch, step=5000)
    txt = stage.trainable["alignment"](prior)
    vec = stage.trainable["alignment_clip"](prior).mean(dim=1)
    drop = torch.rand(2) < 0.1  # align.condition_dropout
    null_txt, null_vec = stage.null
    txt = torch.where(drop[:, None, None], null_txt.expand_as(txt), txt)
    vec = torch.where(drop[:, None], null_vec.expand_as(vec), vec)
    x0 = inputs["x0"]
    noise = torch.randn(x0.shape)
    sigma = torch.rand(2)
    x_t = (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise
    tr = stage.frozen.transformer
    v = tr(hidden_states=torch.cat([x_t, inputs["fill"]], dim=2), timestep=sigma, guidance=torch.full([2], 30.0),
           pooled_projections=vec, encoder_hidden_states=txt, txt_ids=torch.zeros(txt.shape[1], 3),
           img_ids=inputs["img_ids"], return_dict=False)[0]
    expected = F.mse_loss(v, noise - x0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_sigma_sampling_options():
    torch.manual_seed(0)
    u = sample_sigmas(20000, {"sigma_sampling": "uniform"}, "cpu")
    ln = sample_sigmas(20000, {"sigma_sampling": "logit_normal", "logit_mean": 1.0, "logit_std": 1.0}, "cpu")
    assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
    # logit-normal: the median is sigmoid(logit_mean), the logits are N(mean, std)
    assert abs(float(ln.median()) - torch.sigmoid(torch.tensor(1.0)).item()) < 0.01
    assert abs(float(torch.logit(ln).std()) - 1.0) < 0.02
    with pytest.raises(ConfigError, match="align.sigma_sampling"):
        sample_sigmas(2, {"sigma_sampling": "cosine"}, "cpu")


def test_null_blend_and_dropout():
    c = (torch.randn(3, 4, 5), torch.randn(3, 6))
    null = (torch.randn(1, 4, 5), torch.randn(1, 6))
    dropped = blend_with_null(c, null, dropout=1.0, weight=1.0)
    assert all(torch.equal(d, n.expand_as(d)) for d, n in zip(dropped, null))
    kept = blend_with_null(c, null, dropout=0.0, weight=1.0)
    assert all(torch.equal(k, x) for k, x in zip(kept, c))
    half = blend_with_null(c, null, dropout=0.0, weight=0.5)
    assert all(torch.allclose(h, (x + n) / 2, atol=1e-6) for h, x, n in zip(half, c, null))
    assert blend_with_null(c[:1], None, 1.0, 0.5) == c[:1]  # no null conditions (SD): unchanged, no draw


def test_heads_start_from_a_converted_released_folder(tmp_path, stage_and_batch):
    stage, _ = stage_and_batch
    for name, sub in (("alignment", "t5"), ("alignment_clip", "clip")):
        stage.trainable[name].save_pretrained(tmp_path / "alignment" / sub)
    torch.manual_seed(123)  # other random heads, unless loaded
    loaded = AlignStage(flux_config(f"paths.alignment_init={tmp_path / 'alignment'}"), torch.device("cpu"),
                        torch.float32)
    for name in ("alignment", "alignment_clip"):
        want, got = stage.trainable[name].state_dict(), loaded.trainable[name].state_dict()
        assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(AsukaError, match="no alignment head 'alignment'"):
        AlignStage(flux_config(f"paths.alignment_init={tmp_path}"), torch.device("cpu"), torch.float32)


def test_flux_align_config_refuses_the_sd_latent_cache(tmp_path):
    with pytest.raises(ConfigError, match="paths.align_latents"):
        AlignStage.check_config(flux_config(f"paths.align_latents={tmp_path}"))


def test_flux_align_resume_is_exact(tmp_path):
    cfg = flux_config("trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.val_every=100",
                      "trainer.batch_size=2")
    assert_resume_exact(cfg, AlignStage, "alignment_clip", tmp_path, stop_at=2)
    a, b = final_weights(tmp_path / "straight", "alignment"), final_weights(tmp_path / "resumed", "alignment")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ckpt = tmp_path / "straight/checkpoints/checkpoint-4"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["alignment", "alignment_clip"]
    assert sorted(p.name for p in (tmp_path / "straight/final").iterdir()) == ["alignment", "alignment_clip"]


def test_flux_align_skips_unreadable_images(tmp_path):
    root = folder_with_broken_images(tmp_path, broken=1)
    cfg = flux_config("dataset=folder", f"dataset.root={root}", "trainer.max_steps=3", "trainer.batch_size=2",
                      "trainer.checkpoint_every=100", "trainer.val_every=100")
    assert fit(cfg, AlignStage, tmp_path / "run")["finished"]
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert records[-1]["bad_unique"] == 1


def test_train_align_benchmark_flux_tiny():
    """scripts/benchmark.py task=train_align model=flux_tiny: the real stage, one timed step, FLOPs per sample."""
    from asuka.benchmark.tasks import resolve_env, run_task

    cfg = compose_config("benchmark", ["bench_model=flux_tiny", "task=train_align", "device=cpu", "size=32",
                                       "batch=2", "warmup=0", "repeats=1"])
    r = run_task(cfg, resolve_env(cfg))
    assert r["losses_finite"] and r["resolution"] == 32 and r["images_per_step"] == 2
    assert set(r["trainable_parameters_m"]) == {"alignment", "alignment_clip"}
    assert r["flops_per_image"] == pytest.approx(r["flops_per_step"] / 2) and r["flops_per_image"] > 0
    with pytest.raises(ConfigError, match="multiple of 16"):
        bad = compose_config("benchmark", ["bench_model=flux_tiny", "task=train_align", "device=cpu", "size=40"])
        run_task(bad, resolve_env(bad))


def test_released_null_conditions_need_the_converted_folder_before_flux_loads():
    cfg = compose_config("train_align", ["model=flux_fill", "paths.flux_fill=/nonexistent"])
    with pytest.raises(ConfigError, match="paths.asuka_flux"):
        AlignStage.check_config(cfg)
    with open_dict(cfg):
        cfg.align.null_conditions = "learned"
    with pytest.raises(ConfigError, match="align.null_conditions"):
        AlignStage.check_config(cfg)
