"""Data parallel on two CPU processes (gloo): the ranks stay identical and see different samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_two_ranks_identical_weights_different_data(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_toy_main.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # each rank draws 8 samples (2 steps x 2 micro-batches x 2); the first 6 are its half of epoch 0
    first_epoch = [set(r["seen"][:6]) for r in ranks]
    assert first_epoch[0].isdisjoint(first_epoch[1]) and first_epoch[0] | first_epoch[1] == set(range(12))
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["ranks"] == [0, 1] and info["effective_batch"] == 8
