"""scripts/export_pipeline.py and scripts/inpaint.py end to end on a tiny exported pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import REPO, compose_config

from asuka.pipelines.inpaint_files import alias_mask_argument, inpaint
from asuka.utils.errors import ConfigError, DataError


def _script(name: str, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args, f"hydra.run.dir={tmp / 'hydra'}"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )


def _write_pair(folder: Path, stem: str, h: int, w: int, seed: int = 0) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = folder / f"{stem}.png"
    PIL.Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image)
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : w * 3 // 4] = 255
    mask = folder / f"{stem}_mask.png"
    PIL.Image.fromarray(m).save(mask)
    return image, mask


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "pipe"
    res = _script("export_pipeline.py", "model=tiny", f"out={out}", tmp=tmp)
    assert res.returncode == 0, res.stderr
    return out


def test_export_writes_a_loadable_folder(exported) -> None:
    index = json.loads((exported / "model_index.json").read_text())
    assert index["mae"][0] == "asuka.models.mae" and index["decoder"] == ["asuka.models.decoder", "AsukaDecoder"]
    for sub in ("unet", "vae", "scheduler", "mae", "alignment", "decoder"):
        assert (exported / sub).is_dir()


def test_inpaint_script_writes_an_image_of_the_input_size(exported, tmp_path) -> None:
    image, mask = _write_pair(tmp_path, "photo", 70, 90)
    out = tmp_path / "out" / "photo.png"
    res = _script("inpaint.py", f"pipeline={exported}", f"image={image}", f"mask={mask}", f"out={out}", "steps=2",
                  tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    result = PIL.Image.open(out)
    assert result.size == (90, 70) and result.mode == "RGB"


def test_corrupt_image_is_one_line_and_exit_2(exported, tmp_path) -> None:
    _, mask = _write_pair(tmp_path, "ok", 64, 64)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    res = _script("inpaint.py", f"pipeline={exported}", f"image={bad}", f"mask={mask}", f"out={tmp_path / 'o.png'}",
                  "steps=2", tmp=tmp_path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(bad) in lines[0]
    assert not (tmp_path / "o.png").exists()


def test_folder_mode_with_the_demo_pipeline(tmp_path) -> None:
    images, masks, outs = tmp_path / "images", tmp_path / "masks", tmp_path / "outs"
    for i, (h, w) in enumerate([(64, 64), (72, 80)]):
        image, mask = _write_pair(images, f"img{i}", h, w, seed=i)
        masks.mkdir(exist_ok=True)
        mask.rename(masks / f"img{i}.png")
    cfg = compose_config("inpaint", ["experiment=demo", f"image_dir={images}", f"mask_dir={masks}",
                                     f"out_dir={outs}", "steps=2"])
    written = inpaint(cfg)
    assert sorted(p.name for p in written) == ["img0.png", "img1.png"]
    assert PIL.Image.open(outs / "img1.png").size == (80, 72)
    (masks / "img1.png").unlink()
    with pytest.raises(DataError, match="img1.*no mask"):
        inpaint(cfg)


def test_config_mistakes(tmp_path) -> None:
    assert alias_mask_argument(["x.py", "mask=/a.png", "mask_dir=/m"]) == ["x.py", "mask_file=/a.png", "mask_dir=/m"]
    with pytest.raises(ConfigError, match="'mask'"):
        inpaint(compose_config("inpaint", ["experiment=demo", "image=a.png", "out=b.png"]))
    with pytest.raises(ConfigError, match="nothing to inpaint"):
        inpaint(compose_config("inpaint", ["experiment=demo"]))
