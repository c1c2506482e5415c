"""Stage 2: the p schedule, what trains and what stays frozen, resume, and a two-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, compose_config  # noqa: E402
from resume_check import assert_resume_exact  # noqa: E402

from asuka.data.datasets import collate  # noqa: E402
from asuka.training.align import AlignStage, reconstructed_prior_prob  # noqa: E402


@pytest.mark.parametrize("step, p", [(0, 1.0), (1000, 0.55), (2000, 0.1), (5000, 0.1)])
def test_reconstructed_prior_schedule(step, p):
    cfg = compose_config("train_align")
    rp = cfg.align.reconstructed_prior
    assert reconstructed_prior_prob(step, rp.p_start, rp.p_end, rp.decay_steps) == pytest.approx(p)


def demo_stage():
    cfg = compose_config("train_align", ["experiment=demo"])
    torch.manual_seed(0)
    stage = AlignStage(cfg, torch.device("cpu"), torch.float32)
    batch = collate([stage.train_dataset()[(0, i)] for i in range(2)])
    return stage, batch


def test_only_alignment_trains():
    stage, batch = demo_stage()
    frozen = {f"{name}.{k}": v.clone() for name, m in (("unet", stage.sd.unet), ("vae", stage.sd.vae),
                                                       ("mae", stage.mae)) for k, v in m.state_dict().items()}
    alignment = stage.trainable["alignment"]
    optimizer = torch.optim.AdamW(alignment.parameters(), lr=1e-2)
    loss = stage.training_step(batch, step=5000).losses["alignment"]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in alignment.parameters())
    for module in (stage.sd.unet, stage.sd.vae, stage.mae):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    optimizer.step()
    after = {f"{name}.{k}": v for name, m in (("unet", stage.sd.unet), ("vae", stage.sd.vae), ("mae", stage.mae))
             for k, v in m.state_dict().items()}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_prior_swap_uses_the_unmasked_image():
    """At p = 1 (step 0) every prior is the MAE's prior of the whole image; at p = 0.1 most are of the masked one."""
    stage, batch = demo_stage()
    image, mask = batch["image"], batch["mask"]
    prior, *_, swapped = stage._frozen_inputs(batch, step=0)
    assert swapped == 1.0
    assert torch.allclose(prior, stage.mae.prior(image, torch.zeros_like(mask)), atol=1e-6)


def test_align_resume_is_exact(tmp_path):
    cfg = compose_config("train_align", ["experiment=demo", "trainer.max_steps=4", "trainer.checkpoint_every=2",
                                         "trainer.val_every=100"])
    assert_resume_exact(cfg, AlignStage, "alignment", tmp_path, stop_at=2)
    assert not (tmp_path / "straight/checkpoints/checkpoint-4/unet").exists()  # only the trained module is saved
    assert sorted(p.name for p in (tmp_path / "straight/final").iterdir()) == ["alignment"]


def test_torchrun_two_processes_one_run_folder(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts/train_align.py"), "experiment=demo", f"hydra.run.dir={run}", "trainer.max_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["effective_batch"] == 8
    assert (run / "final/alignment/config.json").is_file()
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
