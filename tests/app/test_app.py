"""The app's request handlers through gradio_client against a server the test starts on 127.0.0.1: two methods side
by side with the known pixels kept, outpainting, LAR-Gen with a prompt and a subject, one-line errors after which
the server keeps serving, models built once, and settings that scripts/inpaint.py reproduces."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCENE = REPO / "data" / "samples" / "scene_00.png"
SUBJECT = REPO / "data" / "largen_samples" / "shard_00000" / "0000000_00_subject.png"
SUBJECT_MASK = REPO / "data" / "largen_samples" / "shard_00000" / "0000000_00_subject_mask.png"


def _mask_file(tmp_path: Path, size: tuple[int, int], box: tuple[int, int, int, int] | None) -> Path:
    mask = np.zeros((size[1], size[0]), np.uint8)
    if box:
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = 255
    path = tmp_path / "mask.png"
    PIL.Image.fromarray(mask).save(path)
    return path


def _call(server, mask: Path | None, methods: list[str], **kw):
    args = dict(editor={"background": handle_file(str(kw.pop("image", SCENE))), "layers": [], "composite": None},
                mask_file=None if mask is None else handle_file(str(mask)), methods=methods, mode="inpaint",
                left=0, right=0, top=0, bottom=0, zoom=1.0, overlap=8, prompt="", subject=None, subject_mask=None,
                image_scale=1.0, seed=0, steps=2, guidance=None, condition_weight=None, paste_back=True,
                max_side=1024, downscale=True)
    args.update(kw)
    return Client(server.url, verbose=False).predict(*args.values(), api_name="/inpaint")


def _image(entry) -> np.ndarray:
    return np.asarray(PIL.Image.open(entry["image"]).convert("RGB"))


def test_two_methods_side_by_side_keep_the_known_pixels(app_server, tmp_path: Path) -> None:
    scene = np.asarray(PIL.Image.open(SCENE).convert("RGB"))
    h, w = scene.shape[:2]
    mask = _mask_file(tmp_path, (w, h), (10, 12, 40, 36))
    gallery, compare, files, status = _call(app_server, mask, ["asuka", "sd"])
    assert [g["caption"].rsplit(" (", 1)[0] for g in gallery] == ["ASUKA (SD-1.5)", "SD-1.5 inpainting"]
    hole = np.asarray(PIL.Image.open(mask)) > 0
    for entry in gallery:
        out = _image(entry)
        assert out.shape == scene.shape
        assert np.array_equal(out[~hole], scene[~hole])  # paste-back: known pixels unchanged
        assert not np.array_equal(out[hole], scene[hole])  # the hole was filled
    assert compare["visible"] is True and len(compare["value"]) == 2
    settings = json.loads(Path(next(f for f in files if f.endswith("settings.json"))).read_text())
    assert set(settings["methods"]) == {"asuka", "sd"} and "Done" in status
    assert all(m["seconds"] > 0 for m in settings["methods"].values())


def test_outpainting_returns_the_larger_canvas_with_the_original_inside(app_server) -> None:
    scene = np.asarray(PIL.Image.open(SCENE).convert("RGB"))
    h, w = scene.shape[:2]
    gallery, _, _, _ = _call(app_server, None, ["asuka", "flux_fill"], mode="outpaint", left=16, top=8, overlap=4)
    for entry in gallery:
        out = _image(entry)
        assert out.shape == (h + 8, w + 16, 3)
        assert np.array_equal(out[8 + 4:, 16 + 4:], scene[4:, 4:])  # outside the overlap band: the original


def test_largen_with_a_prompt_and_a_subject(app_server, tmp_path: Path) -> None:
    scene = np.asarray(PIL.Image.open(SCENE).convert("RGB"))
    mask = _mask_file(tmp_path, scene.shape[1::-1], (20, 20, 50, 50))
    gallery, compare, files, _ = _call(app_server, mask, ["largen"], prompt="a red ball",
                                       subject=handle_file(str(SUBJECT)), subject_mask=handle_file(str(SUBJECT_MASK)))
    assert len(gallery) == 1 and gallery[0]["caption"].startswith("LAR-Gen")
    assert _image(gallery[0]).shape == scene.shape
    assert compare["visible"] is False
    command = json.loads(Path(next(f for f in files if f.endswith("settings.json"))).read_text())[
        "methods"]["largen"]["command"]
    assert "prompt=a red ball" in shlex.split(command) and any(a.startswith("subject=") for a in shlex.split(command))


def test_bad_inputs_are_one_readable_message_and_the_server_keeps_serving(app_server, tmp_path: Path) -> None:
    size = PIL.Image.open(SCENE).size
    empty = _mask_file(tmp_path, size, None)
    with pytest.raises(gradio_client.exceptions.AppError, match="the mask has no hole"):
        _call(app_server, empty, ["asuka"])
    hole = _mask_file(tmp_path, size, (5, 5, 20, 20))
    with pytest.raises(gradio_client.exceptions.AppError, match="above max_side=32"):
        _call(app_server, hole, ["asuka"], max_side=32, downscale=False)
    with pytest.raises(gradio_client.exceptions.AppError, match="LAR-Gen needs a prompt"):
        _call(app_server, hole, ["largen"])
    gallery, _, _, _ = _call(app_server, hole, ["asuka"], max_side=32, downscale=True)  # and the next one works
    assert _image(gallery[0]).shape[:2] == size[::-1]


def test_models_are_built_once_per_process(app_server, tmp_path: Path) -> None:
    hole = _mask_file(tmp_path, PIL.Image.open(SCENE).size, (5, 5, 20, 20))
    _call(app_server, hole, ["sd"])
    builds = app_server.models.builds
    _call(app_server, hole, ["sd"], seed=3)
    assert app_server.models.builds == builds == len(app_server.models.pipelines)


def test_the_settings_reproduce_the_result_with_inpaint_py(app_server, tmp_path: Path) -> None:
    hole = _mask_file(tmp_path, PIL.Image.open(SCENE).size, (8, 8, 30, 24))
    gallery, _, files, _ = _call(app_server, hole, ["asuka"], seed=7)
    settings = json.loads(Path(next(f for f in files if f.endswith("settings.json"))).read_text())
    args = shlex.split(settings["methods"]["asuka"]["command"])[2:]
    out = tmp_path / "again.png"
    args = [a if not a.startswith("out=") else f"out={out}" for a in args]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "inpaint.py"), *args,
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.array_equal(np.asarray(PIL.Image.open(out).convert("RGB")), _image(gallery[0]))
