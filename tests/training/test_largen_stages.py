"""LAR-Gen training: the quadruplet samples, what each stage trains, exact resume of both stages."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import compose_config  # noqa: E402
from resume_check import assert_resume_exact, final_weights  # noqa: E402

from asuka.data.datasets import collate  # noqa: E402
from asuka.models.sd import build_tiny_sd  # noqa: E402
from asuka.training.largen import AssignStage, RefineStage, stage_class  # noqa: E402
from asuka.training.largen_data import build_quadruplet_dataset, drop_kind  # noqa: E402
from asuka.utils.errors import ConfigError  # noqa: E402

FAST = ["experiment=demo", "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.val_every=100",
        "trainer.batch_size=2"]


def demo_cfg(*overrides: str):
    return compose_config("train_largen", [*FAST, *overrides])


def test_samples_are_reproducible_and_well_formed():
    cfg = demo_cfg("largen.data_aug.drop.text=0.5", "largen.data_aug.drop.subject=0.5", "largen.data_aug.drop.both=0")
    dataset = build_quadruplet_dataset(cfg)
    a, b, other = dataset[(0, 1)], dataset[(0, 1)], dataset[(1, 1)]
    assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "subject")) and a["caption"] == b["caption"]
    assert not torch.equal(a["subject"], other["subject"])  # another epoch, another augmentation
    assert a["image"].shape == a["subject"].shape == (3, 64, 64) and a["mask"].shape == (1, 64, 64)
    assert 0 < a["mask"].mean() < 1 and set(a["mask"].unique().tolist()) <= {0.0, 1.0}
    kinds = [(s["caption"] != "", float(s["subject_keep"])) for s in (dataset[(e, i)] for e in range(6) for i in range(4))]
    assert (True, 0.0) in kinds and (False, 1.0) in kinds and (True, 1.0) not in kinds  # p = 0.5 + 0.5


def test_drop_kind_partitions_the_unit_interval():
    assert [drop_kind(u, 0.05, 0.05, 0.05) for u in (0.01, 0.07, 0.12, 0.5)] == [
        (False, True), (True, False), (False, False), (True, True)]


def test_bad_stage_and_missing_stage_a_are_config_errors():
    with pytest.raises(ConfigError, match="largen.stage"):
        stage_class(demo_cfg("largen.stage=both"))
    cfg = compose_config("train_largen", ["largen.stage=refine", "paths.largen_data=data/largen_samples"])
    with pytest.raises(ConfigError, match="largen.unet"):
        RefineStage(cfg, torch.device("cpu"), torch.float32)


def test_demo_refine_without_stage_a_says_it_starts_from_random(caplog):
    RefineStage.check_config(demo_cfg("largen.stage=refine"))
    assert "largen.unet not set: stage B starts from a RANDOM tiny stage A" in caplog.text
    assert "largen.assign not set" in caplog.text


@pytest.mark.parametrize("model", [[], ["model=sdxl_tiny"]])  # SD-1.5, and SDXL (none released: ours is the only one)
def test_refine_stage_trains_only_the_refinenet(model):
    cfg = demo_cfg("largen.stage=refine", *model)
    torch.manual_seed(0)
    stage = RefineStage(cfg, torch.device("cpu"), torch.float32)
    batch = collate([stage.train_dataset()[(0, i)] for i in range(2)])
    batch["subject_keep"] = torch.tensor([1.0, 1.0])
    frozen = {k: v.clone() for k, v in stage.net.state_dict().items()}
    out = stage.training_step(batch, 0)
    out.losses["refine"].backward()
    refine = stage.trainable["refine"]
    assert refine.detail_encoder.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in stage.net.parameters())
    if model:  # SDXL: the RefineNet's copy of the added (pooled + size) embedding is fed and trains
        assert refine.unet.add_embedding.linear_1.weight.grad.abs().sum() > 0
    torch.optim.SGD(refine.parameters(), lr=1.0).step()
    assert all(torch.equal(frozen[k], v) for k, v in stage.net.state_dict().items())


def test_assign_stage_trains_unet_and_adapter_and_resumes_exactly(tmp_path):
    cfg = demo_cfg()
    assert_resume_exact(cfg, AssignStage, "assign", tmp_path, stop_at=2)
    a, b = final_weights(tmp_path / "straight", "unet"), final_weights(tmp_path / "resumed", "unet")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    initial = build_tiny_sd(0).unet.state_dict()
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 0  # the UNet trained
    assert sorted(p.name for p in (tmp_path / "straight/final").iterdir()) == ["assign", "unet"]


@pytest.mark.parametrize("model", [[], ["model=sdxl_tiny"]])
def test_refine_stage_resumes_exactly(tmp_path, model):
    assert_resume_exact(demo_cfg("largen.stage=refine", *model), RefineStage, "refine", tmp_path, stop_at=2)


@pytest.mark.parametrize("name, extra", [("train_largen", []), ("eval", ["method=largen", "dataset=dreambench_coco"]),
                                         ("inpaint", ["method=largen"]), ("export_pipeline", ["method=largen"])])
@pytest.mark.parametrize("demo", [False, True])
def test_largen_configs_compose_and_resolve(name, extra, demo):
    from asuka.training.run_dir.info import config_container

    container = config_container(compose_config(name, [*extra, *(["experiment=demo"] if demo else [])]))
    assert container["model"]["largen"]["image_encoder"]["source"] == ("tiny" if demo else "pretrained")
    if name == "train_largen" and not demo:
        assert container["largen"]["stage"] == "assign" and container["optim"]["lr"] == 1e-4
        assert container["model"]["largen"]["assign"]["num_tokens"] == 16
    if name != "train_largen":
        assert container["method"]["name"] == "largen" and container["largen"]["guidance_scale"] == 7.5


def test_assign_stage_unet_at_its_own_learning_rate(tmp_path):
    """The engine builds one optimizer over parts of the composite module: UNet at unet_lr_scale, adapter at lr."""
    from asuka.training.engine import Trainer

    cfg = demo_cfg("largen.unet_lr_scale=0.25")
    trainer = Trainer(cfg, AssignStage, tmp_path)
    net = trainer.stage.trainable["largen"]
    net = getattr(net, "module", net)
    lrs = {id(p): g["lr"] for g in trainer.optimizers["largen"].param_groups for p in g["params"]}
    assert len(lrs) == sum(1 for _ in net.parameters())  # every parameter once
    assert all(lrs[id(p)] == pytest.approx(0.25e-3) for p in net.unet.parameters())
    assert all(lrs[id(p)] == pytest.approx(1e-3) for p in net.assign.parameters())
