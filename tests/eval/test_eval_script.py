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
