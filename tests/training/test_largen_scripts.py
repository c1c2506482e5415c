"""``scripts/train_largen.py``: stage A then stage B from stage A's outputs, as a user runs them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO  # noqa: E402


def test_train_largen_script_runs_both_stages(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    common = ["experiment=demo", "trainer.max_steps=2", "trainer.val_every=2", "largen.val_inference_steps=2",
              "trainer.val_images=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    for run, extra in ((a, []), (b, ["largen.stage=refine", f"largen.unet={a}/final/unet",
                                    f"largen.assign={a}/final/assign"])):
        proc = subprocess.run([sys.executable, str(REPO / "scripts/train_largen.py"), *common, *extra,
                               f"hydra.run.dir={run}"], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (b / "final/refine/config.json").is_file() and (b / "val/step_0000002.png").is_file()
    grid = np.asarray(Image.open(b / "val/step_0000002.png"))
    assert grid.shape == (6 * 64, 2 * 64, 3)  # rows: scene, masked scene, subject, prompt, output at lambda 1 and 0.5
