"""SD-1.5 inpainting baselines ("SD", "SD-text"): tiny random parts, and the local-folder loading path."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import CLIPTokenizer

from asuka.models.sd import load_sd_inpaint
from asuka.pipelines.baselines import SDInpaintBaseline, load_sd_baseline, tiny_text_encoder
from asuka.utils.errors import AsukaError

TINY = {"source": "tiny", "dtype": "float32", "seed": 0}


def _image(seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask() -> PIL.Image.Image:
    m = np.zeros((64, 64), np.uint8)
    m[16:44, 12:50] = 255
    return PIL.Image.fromarray(m)


def _run(b: SDInpaintBaseline, **kw):
    kw.setdefault("output_type", "np")
    kw.setdefault("paste_back", False)  # the sampled pixels, as the references give them
    return b(_image(), _mask(), num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kw).images


@pytest.fixture(scope="module")
def sd_baseline() -> SDInpaintBaseline:
    b = load_sd_baseline(None, "", sd_cfg=TINY)
    b.set_progress_bar_config(disable=True)
    return b


@pytest.fixture(scope="module")
def sd_text() -> SDInpaintBaseline:
    b = load_sd_baseline(None, "background", sd_cfg=TINY)
    b.set_progress_bar_config(disable=True)
    return b


def test_tiny_baselines_run_and_differ(sd_baseline, sd_text) -> None:
    a, b = _run(sd_baseline), _run(sd_text)
    assert a.shape == b.shape == (1, 64, 64, 3) and np.isfinite(a).all()
    assert not np.array_equal(a, b)  # the prompt reaches the UNet
    assert np.array_equal(a, _run(sd_baseline))  # seeded
    assert sd_text.prompt_embeds.shape == (1, 77, 32)


def test_same_call_signature_as_asuka(sd_text) -> None:
    known = np.asarray(_mask()) < 128
    out = _run(sd_text, paste_back=True)[0]
    assert np.abs(out[known] - np.asarray(_image())[known] / 255.0).max() < 1e-6
    pil = sd_text(_image(), _mask(), num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert pil.size == (64, 64) and pil.mode == "RGB"
    empty = PIL.Image.new("L", (64, 64), 0)
    same = sd_text(_image(), empty, num_inference_steps=2).images[0]
    assert np.array_equal(np.asarray(same), np.asarray(_image()))
    odd, odd_mask = _image().crop((0, 0, 61, 59)), _mask().crop((0, 0, 61, 59))
    two = sd_text(odd, odd_mask, num_inference_steps=2, num_images_per_prompt=2, strength=0.5,
                  generator=[torch.Generator().manual_seed(i) for i in (0, 1)]).images
    assert [im.size for im in two] == [(61, 59)] * 2  # the caller's size, pasted back by default
    known = np.asarray(odd_mask) < 128
    assert all(np.array_equal(np.asarray(im)[known], np.asarray(odd)[known]) for im in two)
    assert not np.array_equal(np.asarray(two[0]), np.asarray(two[1]))


def test_load_from_local_folder(tmp_path) -> None:
    sd = load_sd_inpaint(TINY, None)
    sd.unet.save_pretrained(tmp_path / "unet")
    sd.vae.save_pretrained(tmp_path / "vae")
    sd.scheduler.save_pretrained(tmp_path / "scheduler")
    with pytest.raises(AsukaError, match="missing tokenizer/"):
        load_sd_baseline(str(tmp_path), "background")
    tiny_text_encoder(0).save_pretrained(tmp_path / "text_encoder")
    CLIPTokenizer(model_max_length=77).save_pretrained(tmp_path / "tokenizer")  # builds with no vocabulary files
    b = load_sd_baseline(str(tmp_path), "background")
    b.set_progress_bar_config(disable=True)
    assert b.pipe.tokenizer is not None and b.prompt_embeds.shape == (1, 77, 32)
    out = _run(b)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_missing_sd_folder(tmp_path) -> None:
    with pytest.raises(AsukaError, match="nowhere"):
        load_sd_baseline(str(tmp_path / "nowhere"), "")
