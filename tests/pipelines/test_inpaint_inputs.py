"""scripts/inpaint.py inputs (issue 12, items 8 and 9): masks whose alpha or 0/1 values would be silently ignored are
refused by name, and images far above the models' resolution are refused up front or inpainted at ``max_side``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from conftest import REPO, compose_config

from asuka.data.images import load_mask
from asuka.pipelines.inpaint_files import check_sizes, inpaint, shrink_mask, working_size
from asuka.utils.errors import ConfigError, DataError


def _script(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(REPO / "scripts/inpaint.py"), "experiment=demo", *args,
                           f"hydra.run.dir={tmp / 'hydra'}"], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _image(path: Path, w: int, h: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, w: int, h: int) -> tuple[Path, np.ndarray]:
    m = np.zeros((h, w), bool)
    m[h // 4: h // 2, w // 3: w * 2 // 3] = True
    m[h - 3, :] = True  # a one-pixel line: must survive a downscale
    PIL.Image.fromarray(m.astype(np.uint8) * 255).save(path)
    return path, m


# ------------------------------------------------------------------------------------------- masks
def test_masks_that_would_silently_mean_no_hole_are_refused(tmp_path) -> None:
    hole = np.zeros((4, 6), np.uint8)
    hole[1:3, 2:5] = 1
    PIL.Image.fromarray(hole).save(tmp_path / "zero_one.png")
    PIL.Image.fromarray(hole.astype(np.uint16)).save(tmp_path / "zero_one16.png")
    for name in ("zero_one.png", "zero_one16.png"):
        with pytest.raises(DataError, match=rf"{name}: mask values are only 0 and 1"):
            load_mask(tmp_path / name)
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1:3, 2:5, :3] = 255
    PIL.Image.fromarray(rgba, mode="RGBA").save(tmp_path / "opaque.png")
    assert load_mask(tmp_path / "opaque.png").tolist() == (hole == 1).tolist()  # opaque alpha carries nothing: read
    rgba[0, 0, 3] = 0
    PIL.Image.fromarray(rgba, mode="RGBA").save(tmp_path / "transparent.png")
    PIL.Image.fromarray(rgba[..., [0, 3]], mode="LA").save(tmp_path / "transparent_la.png")
    for name in ("transparent.png", "transparent_la.png"):
        with pytest.raises(DataError, match=rf"{name}: mask has transparent pixels"):
            load_mask(tmp_path / name)


def test_inpaint_script_refuses_an_rgba_mask_with_transparency(tmp_path) -> None:
    image = _image(tmp_path / "photo.png", 64, 64)
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[20:40, 20:40] = 255  # white opaque strokes on a transparent layer
    PIL.Image.fromarray(rgba, mode="RGBA").save(tmp_path / "strokes.png")
    line = _one_error_line(_script(f"image={image}", f"mask={tmp_path / 'strokes.png'}", f"out={tmp_path / 'o.png'}",
                                   "steps=2", tmp=tmp_path))
    assert "strokes.png: mask has transparent pixels" in line
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------------------------- huge inputs
def test_huge_image_is_refused_from_its_header_before_any_model_loads(tmp_path) -> None:
    """A 4000x3000 photo at full size ran > 15 min silently (tiny models); now one line names the way out."""
    big = tmp_path / "photo.png"
    PIL.Image.new("RGB", (4000, 3000), (90, 120, 60)).save(big)  # a few kB: only the header is read
    mask, _ = _mask(tmp_path / "mask.png", 4000, 3000)
    line = _one_error_line(_script(f"image={big}", f"mask={mask}", f"out={tmp_path / 'o.png'}", tmp=tmp_path))
    assert "'max_side'" in line and "photo.png (4000x3000)" in line and "max_side=1024" in line
    assert "downscale=true" in line and "max_side=null" in line


def test_downscale_inpaints_at_max_side_and_pastes_the_hole_into_the_full_image(tmp_path, capsys) -> None:
    image = _image(tmp_path / "wide.png", 200, 150)
    mask, hole = _mask(tmp_path / "wide_mask.png", 200, 150)
    out = tmp_path / "out.png"
    cfg = compose_config("inpaint", ["experiment=demo", f"image={image}", f"mask_file={mask}", f"out={out}",
                                     "steps=2", "max_side=64", "downscale=true"])
    assert inpaint(cfg) == [out]
    assert "[inpaint 1/1] wide.png: 200x150, inpainted at 64x48 and pasted back, 2 steps" in capsys.readouterr().out
    result, original = np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(image))
    assert result.shape == original.shape
    assert np.array_equal(result[~hole], original[~hole])  # known pixels: the input's bytes
    assert np.abs(result[hole].astype(int) - original[hole]).mean() > 5  # the hole is filled, not copied


def test_size_rules() -> None:
    assert working_size((4000, 3000), 1024) == (1024, 768) and working_size((300, 200), 1024) == (300, 200)
    assert working_size((4000, 3000), None) == (4000, 3000)
    thin = np.zeros((150, 200), bool)
    thin[147, :] = True
    assert shrink_mask(thin, (64, 48)).any(axis=1).sum() == 1  # a one-pixel line is still a hole at 64x48
    with pytest.raises(ConfigError, match="'max_side'.*integer >= 64"):
        inpaint(compose_config("inpaint", ["experiment=demo", "image=a.png", "mask_file=b.png", "out=c.png",
                                           "max_side=10"]))


def test_no_limit_and_folders_list_every_huge_image(tmp_path) -> None:
    pairs = []
    for i, size in enumerate([(2000, 100), (64, 64), (100, 1500)]):
        pairs.append((_image(tmp_path / f"{i}.png", *size), tmp_path / "m.png", tmp_path / "o.png"))
    with pytest.raises(ConfigError) as err:
        check_sizes(pairs, 1024, downscale=False)
    assert "0.png (2000x100), 2.png (100x1500): longer side above max_side=1024" in str(err.value)
    assert check_sizes(pairs, None, downscale=False) == [(2000, 100), (64, 64), (100, 1500)]
    assert check_sizes(pairs, 1024, downscale=True)[0] == (2000, 100)


def test_every_input_and_output_is_checked_before_any_model(tmp_path, monkeypatch) -> None:
    """Folder mode finds the bad mask among the images before the first is inpainted; an out= without an image
    extension, or a folder, is refused before the model loads."""
    from asuka.pipelines import inpaint_files

    monkeypatch.setattr(inpaint_files, "_pipeline", lambda *a: pytest.fail("the model loaded before the checks"))
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for k in range(3):
        PIL.Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(images / f"im{k}.png")
        hole = np.zeros((32, 32), np.uint8)
        hole[8:20, 8:20] = 1 if k == 2 else 255  # the last mask holds 0/1 values: no hole at all
        PIL.Image.fromarray(hole).save(masks / f"im{k}.png")
    cfg = compose_config("inpaint", ["experiment=demo", f"image_dir={images}", f"mask_dir={masks}",
                                     f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(DataError, match=r"im2.png: mask values are only 0 and 1"):
        inpaint(cfg)
    assert not (tmp_path / "out").exists()
    for out, message in ((tmp_path / "result", "give an image file name"), (tmp_path, "is a folder")):
        single = compose_config("inpaint", ["experiment=demo", f"image={images / 'im0.png'}",
                                            f"mask_file={masks / 'im0.png'}", f"out={out}"])
        with pytest.raises(ConfigError, match=message):
            inpaint(single)
