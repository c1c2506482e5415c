"""LarGenInpaintPipeline: text only, subject only, both; known pixels kept; the scene crop; round trip; decoder."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose_config  # noqa: E402

from asuka.models.largen.crop import mask_box  # noqa: E402
from asuka.models.largen.outpaint import outpaint_canvas  # noqa: E402
from asuka.pipelines.largen_build import build_largen_pipeline, load_largen_pipeline  # noqa: E402
from asuka.pipelines.loading import load_pipeline  # noqa: E402
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline  # noqa: E402
from asuka.utils.errors import AsukaError  # noqa: E402


@pytest.fixture(scope="module")
def pipe() -> LarGenInpaintPipeline:
    pipe = build_largen_pipeline(compose_config("eval", ["experiment=demo", "method=largen"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def scene_and_mask(h: int = 96, w: int = 128):
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    mask = np.zeros((h, w), np.uint8)
    mask[30:50, 70:95] = 255
    mask[30:36, 70:78] = 0  # a notch: not a rectangle
    return scene, Image.fromarray(mask)


def subject():
    arr = np.full((40, 30, 3), 255, np.uint8)
    arr[5:35, 5:25] = (200, 30, 30)
    return Image.fromarray(arr), Image.fromarray(((arr[..., 1] < 100) * 255).astype(np.uint8))


def run(pipe, **kwargs):
    scene, mask = scene_and_mask()
    out = pipe(scene, mask, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np",
               **kwargs).images[0]
    return np.asarray(scene).astype(np.float32) / 255, np.asarray(mask) > 127, out


@pytest.mark.parametrize("mode", ["text", "subject", "both"])
def test_text_subject_and_both_inpaint_only_the_hole(pipe, mode):
    image, hole = subject()
    kwargs = {"text": {"prompt": "a red ball"}, "subject": {"subject_image": image, "subject_mask": hole},
              "both": {"prompt": "a red ball", "subject_image": image, "subject_mask": hole}}[mode]
    scene, mask, out = run(pipe, **kwargs)
    assert out.shape == scene.shape
    if mode == "both":  # released LAR-Gen: text + subject fill the mask's bounding box
        mask = np.zeros_like(mask)
        mask[30:50, 70:95] = True
        assert np.abs(out[30:36, 70:78] - scene[30:36, 70:78]).mean() > 0.02  # the notch was regenerated
    assert np.abs(out[~mask] - scene[~mask]).max() < 1 / 255 + 1e-6  # known pixels pasted back exactly
    assert np.abs(out[mask] - scene[mask]).mean() > 0.02  # the hole was filled with something else


def test_odd_sizes_keep_the_callers_size(pipe):
    scene, mask = scene_and_mask()
    odd, odd_mask = scene.crop((0, 0, scene.width - 3, scene.height - 5)), mask.crop((0, 0, scene.width - 3,
                                                                                     scene.height - 5))
    out = pipe(odd, odd_mask, prompt="a red ball", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images[0]
    assert out.shape[:2] == (odd.height, odd.width)
    known = np.asarray(odd_mask) < 128
    assert np.abs(out[known] - np.asarray(odd)[known] / 255).max() < 1e-6


def test_prompt_and_subject_change_the_result(pipe):
    image, hole = subject()
    _, mask, text = run(pipe, prompt="a red ball")
    _, _, both = run(pipe, prompt="a red ball", subject_image=image, subject_mask=hole)
    _, _, weak = run(pipe, prompt="a red ball", subject_image=image, subject_mask=hole, image_scale=0.0)
    assert np.abs(text[mask] - both[mask]).max() > 1e-3
    assert np.abs(weak[mask] - both[mask]).max() > 1e-3


def test_locate_and_the_last_step_as_released(pipe, monkeypatch):
    """Released scepter sampling: before every model call (the first included) the known latent cells are the source
    latent noised to t with fresh noise; the mask reaches the latent grid by antialiased resize > 0.5; the last DDIM
    step returns the clean estimate."""
    import torchvision.transforms.functional as TF

    import asuka.pipelines.pipeline_largen as module

    encoded, final, calls = [], [], []
    real_encode, real_net = module.encode_latents, pipe.net
    monkeypatch.setattr(module, "encode_latents", lambda *a, **k: encoded.append(real_encode(*a, **k)) or encoded[-1])
    monkeypatch.setattr(pipe, "_decode", lambda latents, image, mask: final.append(latents) or image)
    monkeypatch.setattr(pipe, "net", lambda x, t, *a: calls.append((x, t, real_net(x, t, *a))) or calls[-1][2])
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 13:43, 8:45] = 1  # edges off the 8-pixel grid: nearest and antialiased resizes differ
    pipe.sample(image, mask, "a ball", None, guidance_scale=1.0, num_inference_steps=3,
                generator=torch.Generator().manual_seed(0))
    known = TF.resize(mask, [8, 8], antialias=True) <= 0.5
    assert not torch.equal(known, mask[:, :, ::8, ::8] < 0.5)
    source, abar = encoded[0], pipe.scheduler.alphas_cumprod
    noises = []
    for x, t, _ in calls:
        noise = (x[:, :4] - abar[t].sqrt() * source) / (1 - abar[t]).sqrt()
        noises.append(noise[known.expand_as(noise)])
        assert 0.5 < float(noises[-1].std()) < 1.5
        assert torch.equal(x[:, 4:5], (~known).float())  # the mask channel is the released latent mask
    assert len(calls) == 3 and not torch.allclose(noises[0], noises[1], atol=1e-3)
    x, t, eps = calls[-1]
    clean = (x[:, :4] - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
    torch.testing.assert_close(final[0], clean, rtol=1e-4, atol=1e-4)


def test_cfg_uncond_keeps_the_subject_reference_as_released(pipe, monkeypatch):
    """Released: the unconditional branch zeroes only Assign's CLIP input; the RefineNet sees the real subject's
    details in both branches, on the subject latent noised afresh per step and per branch."""
    refs, nets = [], []
    real_refine, real_net = pipe.refine, pipe.net
    monkeypatch.setattr(pipe, "refine", lambda x, t, clip, added: refs.append((x, clip, added))
                        or real_refine(x, t, clip, added))
    monkeypatch.setattr(pipe, "net", lambda x, t, text, img, scale, bank, keep, added: nets.append((img, bank, keep))
                        or real_net(x, t, text, img, scale, bank, keep, added))
    image, hole = subject()
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 8:48] = 1
    from asuka.pipelines.pipeline_largen import subject_tensor

    pipe.sample(pixels, mask, "a ball", subject_tensor(image, hole, 64), guidance_scale=7.5, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0))
    assert len(refs) == 2
    for noisy, clip, added in refs:
        assert noisy.shape[0] == 2 and not torch.allclose(noisy[0], noisy[1])  # one noise per branch
        assert torch.equal(clip[0], clip[1])  # the uncond branch keeps the real subject's details
        assert added is None  # SD-1.5: no added conditions
    assert not torch.allclose(refs[0][0], refs[1][0])  # and per step
    for img, bank, keep in nets:
        assert keep is None and bank is not None  # both branches read the reference
        assert not torch.allclose(img[0], img[1])  # Assign: zeroed pixels in the uncond branch only


def test_needs_a_prompt_or_a_subject(pipe):
    scene, mask = scene_and_mask()
    with pytest.raises(AsukaError, match="prompt, a subject image, or both"):
        pipe(scene, mask)


def test_round_trip_keeps_every_weight_and_the_output(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "largen")
    loaded = load_largen_pipeline(tmp_path / "largen")
    loaded.set_progress_bar_config(disable=True)
    for name in ("unet", "assign", "refine", "image_encoder", "text_encoder", "vae"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    from asuka.pipelines import LarGenInpaintPipeline as exported  # importable as the ASUKA pipelines are

    by_key = build_largen_pipeline(compose_config("inpaint", ["experiment=demo", "method=largen",
                                                              f"pipeline={tmp_path / 'largen'}"]))
    assert exported is LarGenInpaintPipeline and isinstance(by_key, exported)  # pipeline= as for ASUKA
    assert torch.equal(by_key.assign.to_k_ip[0].weight, pipe.assign.to_k_ip[0].weight)
    image, hole = subject()
    _, mask, before = run(pipe, prompt="a kite", subject_image=image, subject_mask=hole)
    _, _, after = run(loaded, prompt="a kite", subject_image=image, subject_mask=hole)
    assert np.abs(before - after).max() < 1e-4


def test_asuka_decoder_as_the_decoder(tmp_path):
    from asuka.models.decoder import build_decoder

    cfg = compose_config("eval", ["experiment=demo", "method=largen"])
    pipe = build_largen_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    decoder = build_decoder(compose_config("eval", ["experiment=demo"]).model.decoder, pipe.vae)
    with_decoder = LarGenInpaintPipeline(**{**pipe.components, "decoder": decoder.eval()})
    with_decoder.set_progress_bar_config(disable=True)
    _, mask, plain = run(pipe, prompt="a vase")
    _, _, decoded = run(with_decoder, prompt="a vase")
    assert np.abs(plain[mask] - decoded[mask]).max() > 1e-3  # another decoder decoded the latents
    with_decoder.save_pretrained(tmp_path / "p")
    assert type(load_largen_pipeline(tmp_path / "p").decoder).__name__ == "AsukaDecoder"
    with pytest.raises(AsukaError, match=r"a LAR-Gen pipeline \(model_index.json: LarGenInpaintPipeline\); run it "
                                         r"with method=largen"):
        load_pipeline(tmp_path / "p")  # what inpaint.py / eval.py call without method=largen
    (tmp_path / "asuka").mkdir()
    (tmp_path / "asuka" / "model_index.json").write_text('{"_class_name": "AsukaInpaintPipeline"}')
    with pytest.raises(AsukaError, match="not a LAR-Gen pipeline .*AsukaInpaintPipeline.*without method=largen"):
        load_largen_pipeline(tmp_path / "asuka")


def test_export_and_inpaint_scripts(tmp_path):
    import subprocess

    from conftest import REPO

    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    shard = REPO / "data/largen_samples/shard_00000"
    export = [sys.executable, str(REPO / "scripts/export_pipeline.py"), "experiment=demo", "method=largen",
              f"out={tmp_path / 'pipe'}", f"hydra.run.dir={tmp_path / 'h1'}"]
    inpaint = [sys.executable, str(REPO / "scripts/inpaint.py"), "experiment=demo", "method=largen",
               f"pipeline={tmp_path / 'pipe'}", f"image={shard / '0000000.png'}",
               f"mask={shard / '0000000_00_mask.png'}", f"subject={shard / '0000001_00_subject.png'}",
               f"subject_mask={shard / '0000001_00_subject_mask.png'}", "prompt=a blue box", "steps=2",
               f"out={tmp_path / 'out.png'}", f"hydra.run.dir={tmp_path / 'h2'}"]
    for cmd in (export, inpaint):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    scene = np.asarray(Image.open(shard / "0000000.png").convert("RGB"))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    x0, y0, x1, y1 = mask_box(np.asarray(Image.open(shard / "0000000_00_mask.png").convert("L")) >= 128)
    known = np.ones(scene.shape[:2], bool)
    known[y0:y1, x0:x1] = False  # text + subject: the mask's box is regenerated
    assert out.shape == scene.shape and np.array_equal(out[known], scene[known])


def test_inpaint_needs_a_prompt_or_subject(tmp_path):
    from asuka.pipelines.largen_build import inpaint_largen
    from asuka.utils.errors import ConfigError

    cfg = compose_config("inpaint", ["experiment=demo", "method=largen", f"image={tmp_path}/a.png",
                                     f"mask_file={tmp_path}/m.png", f"out={tmp_path}/o.png"])
    with pytest.raises(ConfigError, match="prompt=TEXT, subject=IMAGE, or both"):
        inpaint_largen(cfg)


def test_released_zoom_in_crop_near_the_border_is_padded_and_pasted_back(pipe):
    """scepter largen_ui: box 1.3x, squared, clipped; a crop cut by the border is padded black and, after sampling,
    pasted back without its padding and 2 more pixels on the padded sides (worked by hand for this mask)."""
    from asuka.models.largen.crop import crop_back, pad_square, released_crop_box

    mask = np.zeros((64, 104), bool)
    mask[44:64, 84:94] = True
    assert released_crop_box(mask) == (76, 40, 100, 64)  # square inside the image
    mask[:] = False
    mask[44:64, 94:104] = True
    assert released_crop_box(mask) == (86, 40, 104, 64)  # 18 wide, 24 high: cut by the right border
    part, part_mask = torch.rand(1, 3, 24, 18) * 2 - 1, torch.ones(1, 1, 24, 18)
    padded, padded_mask, pads = pad_square(part, part_mask)
    assert pads == (3, 3) and torch.equal(padded[..., 3:21], part)
    assert (padded[..., :3] == -1).all() and (padded_mask[..., 21:] == 0).all()
    patch, where = crop_back(padded, (24, 18), pads)
    assert where == (2, 0, 16, 24) and torch.equal(patch, part[..., 2:16])

    scene = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 104, 3), dtype=np.uint8))
    out = pipe(scene, Image.fromarray(mask.astype(np.uint8) * 255), prompt="a ball", num_inference_steps=1,
               paste_back=False, generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    source = np.asarray(scene).astype(np.float32) / 255
    changed = np.abs(out - source).max(axis=-1) > 1 / 255 + 1e-6
    assert changed[40:64, 88:102].mean() > 0.5 and not changed[:, :88].any() and not changed[:, 102:].any()
    assert not changed[:40].any()


def test_outpaint_samples_the_released_canvas_whole_and_keeps_the_known_pixels(pipe, monkeypatch):
    """Released text-guided outpainting: the sampler gets the whole canvas (no zoom-in crop) and its hole; the output
    is the canvas, the scaled image's inner pixels pasted back, the hole from the sampler."""
    scene, _ = scene_and_mask()
    canvas, hole = outpaint_canvas(np.asarray(scene), 48, 64, 0.75, "LeftUp")
    seen = {}
    result = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sample = pipe.sample

    def spy(image, mask, *args):
        seen.update(image=image, mask=mask, args=args)
        return result

    monkeypatch.setattr(pipe, "sample", spy)
    out = pipe.outpaint(scene, "a beach", direction="LeftUp", height=48, width=64, output_type="np").images[0]
    torch.testing.assert_close(seen["image"], torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert torch.equal(seen["mask"], torch.from_numpy(hole)[None, None].float())
    assert seen["args"][:2] == ("a beach", None)  # text only, as released
    assert out.shape == (48, 64, 3)
    np.testing.assert_allclose(out[~hole], canvas[~hole] / 255, atol=1e-6)
    np.testing.assert_allclose(out[hole], ((result[0].permute(1, 2, 0).numpy() + 1) / 2)[hole], atol=1e-6)
    monkeypatch.setattr(pipe, "sample", sample)
    real = pipe.outpaint(scene, "a beach", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="np").images[0]
    canvas, hole = outpaint_canvas(np.asarray(scene), pipe.default_size, pipe.default_size)
    assert real.shape == canvas.shape and np.abs(real[~hole] - canvas[~hole] / 255).max() < 1e-6
    assert np.abs(real[hole] - canvas[hole] / 255).mean() > 0.02  # the border was generated
    with pytest.raises(AsukaError, match="multiples of"):
        pipe.outpaint(scene, "a beach", height=50)
