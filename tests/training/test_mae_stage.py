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
