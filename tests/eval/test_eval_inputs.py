"""Evaluation inputs are checked before any work: a late bad file, a 0/1-valued mask and an empty mask are all named
at once, before any image is generated or scored (issue 12, items 7 and 8)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from asuka.data.images import image_size
from asuka.eval import features as F
from asuka.eval import generate as gen_mod
from asuka.eval import run as run_mod
from asuka.utils.errors import DataError
from conftest import REPO
from test_eval_run import SIZE, _cfg, _make_folder


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if any Inception feature is computed (= scoring started)."""
    monkeypatch.setattr(F.InceptionFeatures, "forward", lambda self, x: pytest.fail("scoring started"))


def test_late_bad_predictions_are_all_named_before_scoring(tmp_path, no_scoring):
    dirs = _make_folder(tmp_path / "data", n=6)
    _truncate(dirs["preds"] / "img05.png")                               # the last image: found after 5 scored
    Image.new("RGB", (SIZE, SIZE // 2)).save(dirs["preds"] / "img04.png")  # wrongly sized
    cfg = _cfg(dirs, tmp_path, "batch_size=2")
    with pytest.raises(DataError) as err:
        run_mod.evaluate(cfg, tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("2 bad input file(s), nothing was generated or scored") and "\n" not in msg
    assert "img05.png: cannot read image" in msg and f"img04.png: prediction is {SIZE}x{SIZE // 2}" in msg
    assert not (tmp_path / "run").exists()


def test_zero_one_and_empty_masks_are_named_before_generation(tmp_path, monkeypatch):
    """A 0/1-valued PNG used to read as "no hole" (thresholded at 128): PSNR 70 and LPIPS 0 averaged in."""
    monkeypatch.setattr(gen_mod, "_build_generator_pipeline", lambda *a: pytest.fail("generation started"))
    dirs = _make_folder(tmp_path / "data", n=4)
    zero_one = (np.asarray(Image.open(dirs["masks"] / "img01.png")) > 0).astype(np.uint8)  # values 0 and 1
    Image.fromarray(zero_one).save(dirs["masks"] / "img01.png")
    Image.new("L", (SIZE, SIZE), 0).save(dirs["masks"] / "img03.png")
    cfg = _cfg(dirs, tmp_path, "model=tiny", "method=sd", "predictions_dir=null")
    with pytest.raises(DataError) as err:
        run_mod.evaluate(cfg, tmp_path / "run")
    msg = str(err.value)
    assert msg.startswith("2 bad input file(s)") and "\n" not in msg
    assert "img01.png: mask values are only 0 and 1" in msg and "img03.png: mask is empty" in msg
    assert not (tmp_path / "run" / "predictions").exists()


def test_image_size_checks_integrity_cheaply(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for suffix in ("png", "jpg", "webp", "bmp"):
        path = tmp_path / f"a.{suffix}"
        Image.fromarray(arr).save(path)
        assert image_size(path) == (30, 20), suffix
        _truncate(path)
        with pytest.raises(DataError, match=rf"a\.{suffix}: cannot read image"):
            image_size(path)
    with pytest.raises(DataError, match="not found"):
        image_size(tmp_path / "missing.png")


def test_eval_script_names_every_bad_file_in_one_line(tmp_path):
    dirs = _make_folder(tmp_path / "data", n=3)
    _truncate(dirs["preds"] / "img02.png")
    Image.new("L", (SIZE, SIZE), 0).save(dirs["masks"] / "img00.png")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/eval.py"), "dataset=folder", f"dataset.root={dirs['images']}",
         f"dataset.mask_root={dirs['masks']}", "method=predictions", f"predictions_dir={dirs['preds']}",
         "metrics.weights=random", f"resolution={SIZE}", "trainer.cpu=true", "metrics.cache_dir=null",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 bad input file(s)"), lines
    assert "img00.png: mask is empty" in lines[0] and "img02.png: cannot read image" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()
