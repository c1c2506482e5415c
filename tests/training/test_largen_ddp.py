"""Stage B under DDP (two CPU processes): the RefineNet's unused tail and the reference bank survive the reducer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO  # noqa: E402


def test_refine_stage_on_two_processes(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "scripts/train_largen.py"), "experiment=demo", "largen.stage=refine", "trainer.max_steps=2",
           "trainer.val_every=100", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "run_info.json").read_text())["world_size"] == 2
    assert (run / "final/refine/config.json").is_file()
