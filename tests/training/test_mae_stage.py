"""Stage 1 through the real entry script and the real configs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, compose_config  # noqa: E402
from resume_check import assert_resume_exact  # noqa: E402

from asuka.training.mae import MaeStage  # noqa: E402


def run_script(script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *overrides], capture_output=True, text=True, timeout=600
    )


def test_train_mae_run_folder_contract_and_resume(tmp_path):
    run = tmp_path / "run"
    args = ("experiment=demo", f"hydra.run.dir={run}", "trainer.checkpoint_every=2")
    proc = run_script("train_mae.py", *args, "trainer.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "run_info.json", "metrics.jsonl", "checkpoints/checkpoint-2/trainer_state.json",
                 "checkpoints/checkpoint-4/mae/config.json", "final/mae/config.json",
                 "final/mae/diffusion_pytorch_model.safetensors"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run_info.json").read_text())["world_size"] == 1
    proc = run_script("train_mae.py", *args, "trainer.max_steps=6", "trainer.resume=latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the second run logged steps 5 and 6 only
    from asuka.models.mae import MaskedAutoencoderViT

    MaskedAutoencoderViT.from_pretrained(str(run / "final/mae"))


def test_mae_resume_is_exact(tmp_path):
    cfg = compose_config("train_mae", ["experiment=demo", "trainer.max_steps=4", "trainer.checkpoint_every=2"])
    assert_resume_exact(cfg, MaeStage, "mae", tmp_path, stop_at=2)


def test_bad_override_is_one_line(tmp_path):
    proc = run_script("train_mae.py", "experiment=demo", f"hydra.run.dir={tmp_path}", "trainer.max_steps=-3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: config key 'trainer.max_steps': must be an integer >= 1, got -3"
    )
    assert "Traceback" not in proc.stderr


def test_scripts_bank_then_stage_one_with_the_bank_and_gpu_decode(tmp_path):
    """The README's fast stage-1 input path as a user runs it: ``make_masks.py format=bank``, then ``train_mae.py``
    with ``mask.source=bank`` and ``dataset.image_work=gpu`` (here the CPU stands in for the device)."""
    import math

    from omegaconf import OmegaConf

    from asuka.data.datasets import build_train_dataset
    from asuka.data.mask_bank import MaskBank
    from asuka.data.masks import GENERATOR_VERSION

    bank, run = tmp_path / "bank", tmp_path / "run"
    proc = run_script("make_masks.py", "format=bank", "n=16", "size=64", "seed=0", f"out={bank}",
                      "paths.coco_instances=null", "paths.object_masks=null", f"hydra.run.dir={tmp_path / 'mm'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((bank / "index.json").read_text())
    assert index["count"] == 16 and index["size"] == 64 and index["generator_version"] == GENERATOR_VERSION
    proc = run_script("train_mae.py", "experiment=demo", "mask.source=bank", f"mask.bank={bank}",
                      "dataset.image_work=gpu", "trainer.max_steps=2", "trainer.checkpoint_every=100",
                      f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    ds = build_train_dataset(OmegaConf.load(run / "config.yaml"))  # the run's own config: bank masks, file bytes
    assert isinstance(ds.mask_generator, MaskBank) and "encoded" in ds[(0, 0)]
