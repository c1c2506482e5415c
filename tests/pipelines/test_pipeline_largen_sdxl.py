"""LarGenInpaintPipeline on SDXL (``model=sdxl_tiny``; the released LAR-Gen backbone): the four tasks, the SDXL
prompt conditions reaching the UNet (and our RefineNet), the round trip and ``scripts/inpaint.py method=largen
model=sdxl_tiny``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, compose_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from largen_helpers import halved_clip_input  # noqa: E402

from asuka.models.largen.outpaint import outpaint_canvas  # noqa: E402
from asuka.models.largen.refine import RefineNet  # noqa: E402
from asuka.pipelines.baselines import tiny_token_ids  # noqa: E402
from asuka.pipelines.largen_build import build_largen_pipeline, load_largen_pipeline  # noqa: E402
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline  # noqa: E402

SDXL_TINY = ["experiment=demo", "method=largen", "model=sdxl_tiny"]


@pytest.fixture(scope="module")
def pipe() -> LarGenInpaintPipeline:
    pipe = build_largen_pipeline(compose_config("eval", SDXL_TINY))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scene(h: int = 96, w: int = 128) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))


def subject() -> Image.Image:
    arr = np.full((40, 30, 3), 255, np.uint8)
    arr[5:35, 5:25] = (200, 30, 30)
    return Image.fromarray(arr)


def hole(task: str, h: int = 96, w: int = 128) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[30:50, 70:95] = True
    return mask


def test_sdxl_backbone_parts(pipe):
    assert pipe.unet.config.addition_embed_type == "text_time" and pipe.unet.config.in_channels == 9
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.refine is None  # released yaml: USE_REFINE False
    assert pipe.scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize("task", ["text", "subject", "text+subject"])
def test_sdxl_inpainting_tasks_fill_only_the_hole(pipe, task):
    kwargs = {"text": {"prompt": "a red ball"}, "subject": {"subject_image": subject()},
              "text+subject": {"prompt": "a red ball", "subject_image": subject()}}[task]
    mask = hole(task)
    out = pipe(scene(), Image.fromarray(mask.astype(np.uint8) * 255), num_inference_steps=2,
               generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images[0]
    source = np.asarray(scene()).astype(np.float32) / 255
    assert out.shape == source.shape
    assert np.abs(out[~mask] - source[~mask]).max() < 1e-6  # known pixels pasted back
    assert np.abs(out[mask] - source[mask]).mean() > 0.02  # the hole was generated


def test_sdxl_prompt_conditions_reach_the_unet(pipe):
    """The UNet gets both encoders' penultimate states, the second encoder's projected pooled vector and the working
    size's time ids, computed here independently; empty prompt in the unconditional branch."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        pipe(scene(), Image.fromarray(hole("text").astype(np.uint8) * 255), prompt="a red ball",
             num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        handle.remove()
    ids = torch.cat([tiny_token_ids(p) for p in ("", "a red ball")])
    with torch.no_grad():
        one = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        two = pipe.text_encoder_2(ids, output_hidden_states=True)
    size = pipe.default_size
    assert len(seen) == 1
    torch.testing.assert_close(seen[0]["encoder_hidden_states"], torch.cat([one, two.hidden_states[-2]], -1))
    torch.testing.assert_close(seen[0]["added_cond_kwargs"]["text_embeds"], two.text_embeds)
    assert seen[0]["added_cond_kwargs"]["time_ids"].tolist() == [[size, size, 0, 0, size, size]] * 2


def test_sdxl_refinenet_gets_the_null_pooled_vector_and_the_size_ids(pipe):
    """Our SDXL RefineNet (stage B; none was released) is a ``text_time`` UNet: in both CFG branches it gets the empty
    prompt's pooled vector (released ``LargenUNetXL``: ``null_y`` in place of the pooled text) and the main UNet's
    size ids, computed here independently; its reference changes the result."""
    refined = LarGenInpaintPipeline(**{**pipe.components,
                                       "refine": RefineNet.from_unet(pipe.unet, pipe.assign.config.image_embed_dim)})
    refined.set_progress_bar_config(disable=True)
    seen = []
    handle = refined.refine.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    run = lambda p: p(scene(), Image.fromarray(hole("text").astype(np.uint8) * 255), prompt="a red ball",  # noqa: E731
                      subject_image=subject(), num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                      output_type="np").images[0]
    try:
        with_refine = run(refined)
    finally:
        handle.remove()
    with torch.no_grad():
        null_pooled = pipe.text_encoder_2(tiny_token_ids(""), output_hidden_states=True).text_embeds
    size = pipe.default_size
    assert len(seen) == 1  # one RefineNet call per step, both branches batched
    torch.testing.assert_close(seen[0]["added_cond_kwargs"]["text_embeds"], null_pooled.repeat(2, 1))
    assert seen[0]["added_cond_kwargs"]["time_ids"].tolist() == [[size, size, 0, 0, size, size]] * 2
    mask = hole("text")
    assert np.abs(with_refine[mask] - run(pipe)[mask]).mean() > 1e-3


def test_sdxl_round_trip_keeps_the_second_encoder_and_the_output(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "largen")
    loaded = load_largen_pipeline(tmp_path / "largen")
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "assign", "text_encoder", "text_encoder_2"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    run = lambda p: p(scene(), Image.fromarray(hole("text").astype(np.uint8) * 255), prompt="a ball",  # noqa: E731
                      subject_image=subject(), num_inference_steps=1, generator=torch.Generator().manual_seed(0),
                      output_type="np").images[0]
    np.testing.assert_array_equal(run(pipe), run(loaded))


def test_inpaint_script_on_sdxl_tiny(tmp_path):
    mask = hole("text")
    scene().save(tmp_path / "scene.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    subject().save(tmp_path / "subject.png")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "scripts/inpaint.py"), *SDXL_TINY, f"image={tmp_path / 'scene.png'}",
           f"mask={tmp_path / 'mask.png'}", f"subject={tmp_path / 'subject.png'}", "steps=2",
           f"out={tmp_path / 'out.png'}", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (96, 128, 3) and np.array_equal(out[~mask], np.asarray(scene())[~mask])


def test_sdxl_outpaint_returns_the_canvas_with_the_known_pixels(pipe):
    """Text-guided outpainting on SDXL through the same method: the released canvas at the UNet's size, its known
    pixels kept (paste-back default), its hole generated; the size ids are the canvas's."""
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        out = pipe.outpaint(scene(), "a field", direction="RightUp", num_inference_steps=2,
                            generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    finally:
        handle.remove()
    size = pipe.default_size
    canvas, known = outpaint_canvas(np.asarray(scene()), size, size, 0.75, "RightUp")
    known = ~known
    assert out.shape == (size, size, 3)
    assert np.abs(out[known] - canvas[known] / 255).max() < 1e-6
    assert np.abs(out[~known] - canvas[~known] / 255).mean() > 0.02
    assert seen[0]["added_cond_kwargs"]["time_ids"].tolist() == [[size, size, 0, 0, size, size]] * 2


@pytest.mark.parametrize("model", [[], ["model=sdxl_tiny"]], ids=["sd15", "sdxl"])
def test_inpaint_script_outpaints_without_a_mask(tmp_path, model):
    """``scripts/inpaint.py method=largen outpaint=LeftDown`` (no mask=): the canvas, the scaled image kept inside."""
    scene().save(tmp_path / "scene.png")
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "scripts/inpaint.py"), *SDXL_TINY[:2], *model, f"image={tmp_path / 'scene.png'}",
           "prompt=a field", "outpaint=LeftDown", "largen.outpaint_ratio=0.5", "largen.outpaint_height=48", "steps=2",
           f"out={tmp_path / 'out.png'}", f"hydra.run.dir={tmp_path / 'h'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.asarray(Image.open(tmp_path / "out.png"))
    width = out.shape[1]
    canvas, hole = outpaint_canvas(np.asarray(scene()), 48, width, 0.5, "LeftDown")
    assert out.shape == (48, width, 3) and np.array_equal(out[~hole], canvas[~hole])
    bad = subprocess.run([*cmd[:-1], "outpaint=Up", f"hydra.run.dir={tmp_path / 'h2'}"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: config key 'outpaint': 'Up': expected one of")


def test_clip_reads_the_subject_square_at_its_own_resolution(pipe):
    """Released (largen_ui.py): the white-padded subject square goes straight from its own resolution to the CLIP
    size (antialiased bilinear: at 2x the [1, 3, 3, 1] / 8 filter, computed here), not via the working size."""
    pixels = np.random.default_rng(1).integers(0, 255, (70, 70, 3), dtype=np.uint8)
    mask = np.zeros((70, 70), bool)
    mask[3:67, 2:66] = True  # released crop [3:66) x [2:65): 63 x 63 -> a 64 square (int(63 * 1.02))
    square = np.full((64, 64, 3), 255, np.uint8)
    square[:63, :63] = pixels[3:66, 2:65]
    size = pipe.image_encoder.config.image_size
    assert size == 32
    seen = []
    handle = pipe.image_encoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["pixel_values"]),
                                                          with_kwargs=True)
    try:
        pipe(scene(), Image.fromarray(hole("subject").astype(np.uint8) * 255), subject_image=Image.fromarray(pixels),
             subject_mask=Image.fromarray(mask.astype(np.uint8) * 255), num_inference_steps=1,
             generator=torch.Generator().manual_seed(0), output_type="np")
    finally:
        handle.remove()
    expected = halved_clip_input(torch.from_numpy(square).permute(2, 0, 1)[None].float() / 255)
    assert seen[0].shape == (2, 3, size, size) and not seen[0][0].any()  # uncond branch: zeroed pixels
    torch.testing.assert_close(seen[0][1:, :, 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=1e-5)


def test_zoom_in_crop_is_cut_at_the_callers_size(pipe, monkeypatch):
    """Released: the crop comes from the image as given, even when its size is not a multiple of 8 (100 x 150 here);
    box by hand from the released rules: rows 40..59 x cols 60..79 -> 1.3x about (49.5, 69.5) -> [36:62, 56:82]."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 255, (100, 150, 3), dtype=np.uint8)
    mask = np.zeros((100, 150), np.uint8)
    mask[40:60, 60:80] = 255
    seen = {}
    result = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def sample(image, m, *args):
        seen["image"] = image
        return result

    monkeypatch.setattr(pipe, "sample", sample)
    out = pipe(Image.fromarray(pixels), Image.fromarray(mask), prompt="a ball", output_type="np").images[0]
    crop = torch.from_numpy(pixels[36:62, 56:82]).permute(2, 0, 1)[None].float() / 127.5 - 1
    expected = torch.nn.functional.interpolate(crop, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(seen["image"], expected)
    assert out.shape == (100, 150, 3)
    outside = np.ones((100, 150), bool)
    outside[36:62, 56:82] = False
    np.testing.assert_allclose(out[outside], pixels[outside] / 255, atol=1e-6)  # untouched outside the crop
