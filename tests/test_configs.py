"""Every primary config composes, with the paper's defaults and with experiment=demo, and resolves fully."""
from __future__ import annotations

import pytest

from conftest import compose_config
from asuka.training.run_dir.info import config_container

PRIMARY = ["train_mae", "train_align", "train_decoder", "eval", "make_latent_aug", "make_align_latents", "export_pipeline",
           "inpaint"]


@pytest.mark.parametrize("name", PRIMARY)
@pytest.mark.parametrize("demo", [False, True])
def test_compose_and_resolve(name, demo):
    cfg = compose_config(name, ["experiment=demo"] if demo else [])
    container = config_container(cfg)  # resolves every interpolation
    assert container["model"]["sd"]["source"] == ("tiny" if demo else "pretrained")
    if demo:
        assert container["trainer"]["cpu"] is True
        assert container["dataset"]["name"] == "samples"


def test_paper_defaults_stage1():
    cfg = compose_config("train_mae")
    mae = cfg.model.mae
    assert (mae.img_size, mae.patch_size, mae.embed_dim, mae.depth, mae.decoder_embed_dim, mae.decoder_depth) == (
        256, 16, 768, 12, 512, 8)
    assert mae.prior_layer == 6 and cfg.mae.keep_ratio == 0.25
    assert cfg.trainer.batch_size * 8 * cfg.trainer.grad_accum == 1024  # paper's batch on 8 GPUs
    assert cfg.optim.base_lr == 1.5e-4 and cfg.optim.scale_lr and list(cfg.optim.betas) == [0.9, 0.95]
    probs = cfg.mask.probs
    assert (probs.object, probs.irregular, probs.regular) == (0.5, 0.4, 0.1)
    assert cfg.mask.object_union_prob == 0.5


def test_paper_defaults_stage2_and_3():
    align = compose_config("train_align")
    assert align.model.alignment.out_dim == 768 and align.model.alignment.depth == 4
    assert align.optim.lr == 5e-2
    p = align.align.reconstructed_prior
    assert (p.p_start, p.p_end, p.decay_steps) == (1.0, 0.1, 2000)
    dec = compose_config("train_decoder")
    assert dec.optim.lr == 8e-5 and dec.optim.schedule == "cosine" and dec.trainer.max_steps == 50000
    assert dec.trainer.batch_size * 8 * dec.trainer.grad_accum == 40
    jitter = dec.decoder_train.color_jitter
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (0.15, 0.2, 0.1, 0.03)
    assert dec.decoder_train.latent_aug_prob == 0.5


def test_eval_dataset_is_a_plain_group_override():
    cfg = compose_config("eval", ["dataset=misato"])
    assert cfg.dataset.name == "misato" and cfg.dataset.root.endswith("misato")


def test_eval_mask_preset_is_places2_protocol():
    cfg = compose_config("train_mae", ["mask=eval"])
    assert list(cfg.mask.hole_range) == [0.2, 0.8] and cfg.mask.probs.regular == 0


def test_run_dir_is_shared_by_ranks(monkeypatch):
    from asuka.utils import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.delenv("ASUKA_RUN_STAMP", raising=False)
    assert cli._run_stamp() == "run-abc"
    monkeypatch.setenv("ASUKA_RUN_STAMP", "fixed")
    assert cli._run_stamp() == "fixed"
