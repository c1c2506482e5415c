"""`python scripts/eval.py experiment=demo` end to end, as a user runs it."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO  # noqa: E402


def test_eval_demo_writes_finite_results(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/eval.py"), "experiment=demo", f"hydra.run.dir={run}",
         f"metrics.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    overall = results["metrics"]
    for key in ("lpips", "fid", "u_ids", "p_ids"):
        assert math.isfinite(overall[key]), key
    assert "RANDOM" in (run / "results.md").read_text()
    assert (run / "per_image.csv").read_text().count("\n") == 1 + 8  # header + the 8 samples


def test_generation_split_over_two_processes_matches_one(tmp_path):
    """torchrun with 2 CPU processes shares the generation; image i is seeded with seed + i, so the predictions are
    those a single process writes, up to float rounding of a different batch make-up (4 images per call instead of
    8): at most one grey level on a few pixels."""
    import os

    import numpy as np
    from PIL import Image

    common = ["experiment=demo", "method=asuka", f"metrics.cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(REPO / "scripts/eval.py"), *common, f"hydra.run.dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(REPO / "scripts/eval.py"), *common, f"hydra.run.dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one/predictions").glob("*.png"))
    assert len(names) == 8 and names == sorted(p.name for p in (tmp_path / "two/predictions").glob("*.png"))
    for name in names:
        a, b = (np.asarray(Image.open(tmp_path / d / "predictions" / name)).astype(int) for d in ("one", "two"))
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3, name
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["metrics"] for d in ("one", "two"))
    assert abs(a["lpips"] - b["lpips"]) < 1e-3 * a["lpips"] and a["count"] == b["count"] == 8
