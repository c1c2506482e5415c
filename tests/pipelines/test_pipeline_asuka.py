"""AsukaInpaintPipeline: the diffusers equivalence contract, the UNet input layout, round trip and input handling."""
from __future__ import annotations

import json
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import compose_config
from diffusers import StableDiffusionInpaintPipeline

from asuka.pipelines.build import build_pipeline, load_pipeline
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.utils.errors import AsukaError, ConfigError

STEPS = 2
# A reloaded pipeline has the same weights bit for bit, but its outputs agree only to float noise: another CPU or
# memory layout may pick other kernels (1 vs 2 threads differ by ~3e-6 here). 1e-4 is far below one 8-bit level (4e-3).
ROUND_TRIP_ATOL = 1e-4
COMPONENTS = ("unet", "vae", "scheduler", "mae", "alignment", "decoder")


@pytest.fixture(scope="module")
def cfg():
    return compose_config("inpaint", ["model=tiny"])


@pytest.fixture(scope="module")
def pipe(cfg) -> AsukaInpaintPipeline:
    p = build_pipeline(cfg)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe_with_decoder(cfg) -> AsukaInpaintPipeline:
    p = build_pipeline(cfg, random_decoder=True)
    p.set_progress_bar_config(disable=True)
    return p


def _image(h: int = 64, w: int = 64, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
    return PIL.Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


def _mask(h: int = 64, w: int = 64) -> PIL.Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h * 5 // 8, w // 6 : w * 3 // 4] = 255
    return PIL.Image.fromarray(m)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _run(p, image, mask, seed: int = 0, **kw):
    kw.setdefault("output_type", "np")
    kw.setdefault("paste_back", False)  # the sampled pixels, as the references give them
    return p(image, mask, num_inference_steps=STEPS, generator=_gen(seed), **kw).images


def _public_config(component) -> dict:
    """Config values as saved to JSON (tuples become lists), without diffusers' private ``_name_or_path`` etc."""
    return json.loads(json.dumps({k: v for k, v in component.config.items() if not k.startswith("_")}))


def _assert_same_components(a: AsukaInpaintPipeline, b: AsukaInpaintPipeline) -> None:
    """The exact property of a round trip: every config value and every weight of every component is identical."""
    for name in COMPONENTS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is None:
            continue
        assert type(x) is type(y) and _public_config(x) == _public_config(y), name
        if isinstance(x, torch.nn.Module):
            sx, sy = x.state_dict(), y.state_dict()
            assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx), name


def _diffusers_twin(p: AsukaInpaintPipeline) -> StableDiffusionInpaintPipeline:
    ref = StableDiffusionInpaintPipeline(
        vae=p.vae, text_encoder=None, tokenizer=None, unet=p.unet, scheduler=p.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref.set_progress_bar_config(disable=True)
    return ref


class _Capture:
    """Forward pre-hook on the UNet: records the 9-channel input, the timestep and the context of every call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append((sample.clone(), torch.as_tensor(t).clone(), kwargs["encoder_hidden_states"].clone()))

    def __enter__(self) -> "_Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ------------------------------------------------------------------------------------------- the contract
def test_equivalent_to_diffusers_inpaint_pipeline(pipe) -> None:
    image, mask = _image(), _mask()
    ours = _run(pipe, image, mask, seed=3)
    embeds = pipe.encode_prior(image, mask)
    ref = _diffusers_twin(pipe)(
        prompt_embeds=embeds, image=image, mask_image=mask, height=64, width=64, guidance_scale=1.0,
        num_inference_steps=STEPS, generator=_gen(3), output_type="np",
    ).images
    assert ours.shape == ref.shape == (1, 64, 64, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_equivalent_for_a_batch_with_a_generator_list(pipe) -> None:
    images, masks = [_image(seed=1), _image(seed=2)], [_mask(), PIL.Image.fromarray(255 - np.asarray(_mask()))]
    ours = pipe(images, masks, num_inference_steps=STEPS, generator=[_gen(1), _gen(2)], output_type="np",
                paste_back=False).images
    ref = _diffusers_twin(pipe)(
        prompt_embeds=pipe.encode_prior(images, masks), image=images, mask_image=masks, height=64, width=64,
        guidance_scale=1.0, num_inference_steps=STEPS, generator=[_gen(1), _gen(2)], output_type="np",
    ).images
    assert ours.shape == (2, 64, 64, 3) and np.abs(ours - ref).max() < 1e-4


def test_unet_sees_the_same_nine_channel_input_as_diffusers(pipe) -> None:
    image, mask = _image(), _mask()
    with _Capture(pipe.unet) as ours:
        _run(pipe, image, mask, seed=5)
    # diffusers' own pipeline would encode the channels-last view numpy_to_pt makes of PIL inputs (other conv kernels,
    # ~2e-6 apart); ours is contiguous NCHW as the official code: give the twin the same contiguous [0, 1] tensors
    nchw = [torch.from_numpy(np.asarray(x, dtype=np.float32) / 255.0).reshape(64, 64, -1).permute(2, 0, 1)
            .contiguous()[None] for x in (image, mask)]
    with _Capture(pipe.unet) as theirs:
        _diffusers_twin(pipe)(
            prompt_embeds=pipe.encode_prior(image, mask), image=nchw[0], mask_image=nchw[1], height=64, width=64,
            guidance_scale=1.0, num_inference_steps=STEPS, generator=_gen(5), output_type="np",
        )
    assert len(ours.calls) == len(theirs.calls) == STEPS
    for (x, t, c), (x_ref, t_ref, c_ref) in zip(ours.calls, theirs.calls):
        assert x.shape == (1, 9, 8, 8)
        assert torch.equal(t, t_ref)
        assert torch.allclose(c, c_ref, atol=1e-6)
        assert torch.allclose(x, x_ref, atol=1e-6)
        # layout: [noisy latents 4 | mask 1 | masked-image latents 4]; the mask channel is binary
        assert set(x[:, 4].unique().tolist()) <= {0.0, 1.0}


# ------------------------------------------------------------------------------------------- round trip
def test_save_and_load_round_trip(pipe_with_decoder, tmp_path) -> None:
    pipe_with_decoder.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "AsukaInpaintPipeline"
    assert index["mae"] == ["asuka.models.mae", "MaskedAutoencoderViT"]
    assert index["alignment"] == ["asuka.models.alignment", "AlignmentModule"]
    assert index["decoder"] == ["asuka.models.decoder", "AsukaDecoder"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert not any(k in index for k in ("text_encoder", "tokenizer"))

    image, mask = _image(), _mask()
    expected = _run(pipe_with_decoder, image, mask)
    from diffusers import DiffusionPipeline  # the generic loader too (a diffusers habit), once asuka is imported

    for loaded in (load_pipeline(tmp_path), AsukaInpaintPipeline.from_pretrained(tmp_path),
                   DiffusionPipeline.from_pretrained(tmp_path)):
        assert type(loaded) is AsukaInpaintPipeline
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded.decoder).__name__ == "AsukaDecoder"
        _assert_same_components(loaded, pipe_with_decoder)
        np.testing.assert_allclose(_run(loaded, image, mask), expected, rtol=0, atol=ROUND_TRIP_ATOL)


def test_round_trip_without_decoder(pipe, tmp_path) -> None:
    pipe.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.decoder is None
    _assert_same_components(loaded, pipe)
    np.testing.assert_allclose(_run(loaded, _image(), _mask()), _run(pipe, _image(), _mask()), rtol=0,
                               atol=ROUND_TRIP_ATOL)


def test_load_pipeline_errors(tmp_path) -> None:
    with pytest.raises(AsukaError, match="model_index.json"):
        load_pipeline(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text('["AsukaInpaintPipeline"]')
    with pytest.raises(AsukaError, match=r"model_index.json: expected a JSON object .* got a list"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text('{"_class_name": "AsukaInp')
    with pytest.raises(AsukaError, match=r"model_index.json: cannot be read"):
        load_pipeline(tmp_path)


# ------------------------------------------------------------------------------------------- decoder
def test_decoder_gets_latents_image_and_mask(pipe_with_decoder, monkeypatch) -> None:
    seen = {}
    original = pipe_with_decoder.decoder.decode

    def spy(z, *args, **kwargs):
        seen.update(z=z, **kwargs)
        return original(z, *args, **kwargs)

    monkeypatch.setattr(pipe_with_decoder.decoder, "decode", spy)
    soft = PIL.Image.fromarray((np.asarray(_mask()) * 0.8).astype(np.uint8))  # 204 -> hole after binarisation
    out = _run(pipe_with_decoder, _image(), soft)
    assert out.shape == (1, 64, 64, 3)
    assert seen["z"].shape == (1, 4, 8, 8)
    assert seen["image"].shape == (1, 3, 64, 64) and seen["image"].min() >= -1 and seen["image"].max() <= 1
    assert seen["mask"].shape == (1, 1, 64, 64) and set(seen["mask"].unique().tolist()) == {0.0, 1.0}
    expected_image = torch.from_numpy(np.array(_image())).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert torch.allclose(seen["image"], expected_image, atol=1e-6)


# ------------------------------------------------------------------------------------------- inputs
def test_odd_sizes_keep_the_callers_size(pipe) -> None:
    """Sampled at the size rounded down to 8 (as diffusers), given back at the caller's: resized, and the known
    pixels pasted back at that size."""
    image, mask = _image(70, 90), _mask(70, 90)
    out = pipe(image, mask, num_inference_steps=STEPS, generator=_gen()).images[0]
    assert out.size == (90, 70)
    known = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(out)[known], np.asarray(image)[known])
    assert pipe.preprocess(image, mask, height=60)[0].shape == (1, 3, 56, 88)  # explicit sizes round down
    ref = _diffusers_twin(pipe)(
        prompt_embeds=pipe.encode_prior(image, mask), image=image, mask_image=mask, height=64, width=88,
        guidance_scale=1.0, num_inference_steps=STEPS, generator=_gen(), output_type="pil",
    ).images[0]
    assert np.abs(_run(pipe, image, mask, height=64, width=88) - np.asarray(ref) / 255.0).max() < 5e-3
    resized = np.asarray(ref.resize((90, 70), PIL.Image.BICUBIC)).astype(float)  # PIL's resize, not ours
    hole = ~known
    assert np.abs(np.asarray(out).astype(float)[hole] - resized[hole]).mean() < 3.0


def test_num_images_per_prompt_and_strength_as_diffusers(pipe) -> None:
    image, mask = _image(), _mask()
    twin = _diffusers_twin(pipe)
    embeds = pipe.encode_prior(image, mask)
    for kw in ({"num_images_per_prompt": 2, "generator": [_gen(4), _gen(5)]}, {"strength": 0.5},
               {"strength": 0.75, "num_images_per_prompt": 2}):
        gen = kw.pop("generator", _gen(4))
        ours = pipe(image, mask, num_inference_steps=4, generator=gen, output_type="np", paste_back=False,
                    **kw).images
        gen = [_gen(4), _gen(5)] if isinstance(gen, list) else _gen(4)
        ref = twin(prompt_embeds=embeds, image=image, mask_image=mask, height=64, width=64, guidance_scale=1.0,
                   num_inference_steps=4, generator=gen, output_type="np", **kw).images
        assert ours.shape == ref.shape == (kw.get("num_images_per_prompt", 1), 64, 64, 3)
        assert np.abs(ours - ref).max() < 1e-4, kw
    copies = pipe(image, mask, num_inference_steps=2, generator=_gen(1), num_images_per_prompt=2,
                  output_type="np").images
    assert np.abs(copies[0] - copies[1]).max() > 0.05  # each copy has its own noise
    with pytest.raises(AsukaError, match="strength"):
        pipe(image, mask, num_inference_steps=4, strength=0.2)  # int(4 * 0.2) = 0 steps
    with pytest.raises(AsukaError, match="a list of 1 generators for 2 images"):
        pipe(image, mask, num_inference_steps=2, generator=[_gen()], num_images_per_prompt=2)


def test_mask_of_another_size_is_resized_with_a_warning(pipe) -> None:
    image = _image()
    big = _mask(128, 128)
    with pytest.warns(UserWarning, match="mask size 128x128 differs from image size 64x64"):
        out = _run(pipe, image, big)
    assert out.shape == (1, 64, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = _run(pipe, image, _mask())  # the nearest-resized mask equals the small one here
    assert np.array_equal(out, same)


def test_soft_masks_are_binarised(pipe) -> None:
    image, mask = _image(), np.asarray(_mask()) > 0
    soft = np.where(mask, 0.7, 0.3).astype(np.float32)
    hard = mask.astype(np.float32)
    assert np.array_equal(_run(pipe, image, soft), _run(pipe, image, hard))
    assert np.array_equal(_run(pipe, image, torch.from_numpy(soft)), _run(pipe, image, hard))


def test_grayscale_rgba_and_16bit_inputs(pipe) -> None:
    rgb = _image()
    gray = rgb.convert("L")
    out_gray = _run(pipe, gray, _mask())
    assert np.array_equal(out_gray, _run(pipe, gray.convert("RGB"), _mask()))
    rgba = rgb.convert("RGBA")
    assert np.array_equal(_run(pipe, rgba, _mask()), _run(pipe, rgb, _mask()))  # opaque alpha: same as RGB
    sixteen = PIL.Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 16-bit grayscale
    assert sixteen.mode.startswith("I")
    assert np.array_equal(_run(pipe, sixteen, _mask()), out_gray)
    mask16 = PIL.Image.fromarray((np.asarray(_mask()) > 0).astype(np.uint16) * 65535)
    assert np.array_equal(_run(pipe, rgb, mask16), _run(pipe, rgb, _mask()))
    assert pipe(gray, _mask(), num_inference_steps=STEPS, generator=_gen()).images[0].mode == "RGB"


def test_tensor_and_numpy_inputs_match_pil(pipe) -> None:
    image, mask = _image(), _mask()
    expected = _run(pipe, image, mask)
    as_np = np.array(image)
    as_pt = torch.from_numpy(as_np).permute(2, 0, 1)[None].float() / 255.0  # diffusers convention: [0, 1]
    m = torch.from_numpy(np.asarray(mask) / 255.0).float()[None, None]
    assert np.abs(_run(pipe, as_np, np.asarray(mask)) - expected).max() < 1e-5
    assert np.abs(_run(pipe, as_pt, m) - expected).max() < 1e-5


def test_all_zero_mask_returns_the_input_unchanged(pipe) -> None:
    image = _image()
    empty = PIL.Image.new("L", image.size, 0)
    with _Capture(pipe.unet) as cap:
        out = pipe(image, empty, num_inference_steps=STEPS, generator=_gen()).images[0]
    assert cap.calls == []  # short-circuit: no sampling at all
    assert np.array_equal(np.asarray(out), np.asarray(image))
    # inside a batch, only the empty sample is passed through
    outs = pipe([image, _image(seed=4)], [empty, _mask()], num_inference_steps=STEPS, generator=_gen()).images
    assert np.array_equal(np.asarray(outs[0]), np.asarray(image))
    assert not np.array_equal(np.asarray(outs[1]), np.asarray(_image(seed=4)))


def test_paste_back_keeps_known_pixels(pipe) -> None:
    image, mask = _image(), _mask()
    out = _run(pipe, image, mask, paste_back=True)[0]
    known = np.asarray(mask) < 128
    assert np.abs(out[known] - np.asarray(image)[known] / 255.0).max() < 1e-6
    free = _run(pipe, image, mask)[0]
    hole = ~known
    assert np.abs(out[hole] - free[hole]).max() < 1e-6
    assert np.abs(free[known] - np.asarray(image)[known] / 255.0).max() > 1e-3  # without it the VAE changes them


def test_fully_masked_image_and_guidance(pipe) -> None:
    image = _image()
    full = PIL.Image.new("L", image.size, 255)
    out = _run(pipe, image, full)  # the MAE sees nothing: the null prior is used, no error
    assert np.isfinite(out).all()
    with _Capture(pipe.unet) as cap:
        cfg_out = _run(pipe, image, _mask(), guidance_scale=3.0)
    assert cap.calls[0][0].shape[0] == 2  # unconditional + conditional branch in one batch
    null = pipe.encode_null_prior(1)
    assert torch.allclose(cap.calls[0][2][:1], null) and not torch.allclose(cap.calls[0][2][1:], null)
    assert not np.array_equal(cfg_out, _run(pipe, image, _mask()))


def test_seeds_and_shapes(pipe) -> None:
    image, mask = _image(), _mask()
    assert np.array_equal(_run(pipe, image, mask, seed=1), _run(pipe, image, mask, seed=1))
    assert not np.array_equal(_run(pipe, image, mask, seed=1), _run(pipe, image, mask, seed=2))
    emb = pipe.encode_prior(image, mask)
    assert emb.shape == (1, 16, 32)  # 4x4 tokens of the tiny MAE, the tiny UNet's cross-attention width
    pt = pipe(image, mask, num_inference_steps=STEPS, generator=_gen(), output_type="pt").images
    assert pt.shape == (1, 3, 64, 64) and pt.min() >= 0 and pt.max() <= 1
    latents = pipe(image, mask, num_inference_steps=STEPS, generator=_gen(), output_type="latent").images
    assert latents.shape == (1, 4, 8, 8)


def test_user_mistakes(pipe, cfg) -> None:
    with pytest.raises(AsukaError, match="2 images but 3 masks"):
        pipe([_image(), _image()], [_mask()] * 3, num_inference_steps=STEPS)
    with pytest.raises(AsukaError, match="image is too small: 6x6 "):
        pipe(_image(6, 6), _mask(6, 6), num_inference_steps=STEPS)
    assert pipe(_image(21, 13), _mask(21, 13), num_inference_steps=STEPS).images[0].size == (13, 21)  # sampled 8x16
    paper = compose_config("inpaint", [])
    with pytest.raises(ConfigError, match="paths.mae"):
        build_pipeline(paper)


def test_build_from_stage_folders(pipe_with_decoder, tmp_path) -> None:
    p = pipe_with_decoder
    for name in ("unet", "vae"):
        getattr(p, name).save_pretrained(tmp_path / "sd" / name)
    p.scheduler.save_pretrained(tmp_path / "sd" / "scheduler")
    p.mae.save_pretrained(tmp_path / "mae")
    p.alignment.save_pretrained(tmp_path / "alignment")
    p.decoder.save_pretrained(tmp_path / "decoder")
    cfg = compose_config("export_pipeline", [
        "model=tiny", "model.sd.source=pretrained", f"sd={tmp_path / 'sd'}", f"mae={tmp_path / 'mae'}",
        f"alignment={tmp_path / 'alignment'}", f"decoder={tmp_path / 'decoder'}",
    ])
    built = build_pipeline(cfg)
    built.set_progress_bar_config(disable=True)
    _assert_same_components(built, p)
    np.testing.assert_allclose(_run(built, _image(), _mask()), _run(p, _image(), _mask()), rtol=0,
                               atol=ROUND_TRIP_ATOL)

    from asuka.models.alignment import AlignmentModule

    AlignmentModule(in_dim=32, out_dim=64, depth=1, num_heads=2).save_pretrained(tmp_path / "wide")
    with pytest.raises(ConfigError, match="model.alignment.out_dim.*cross-attention width is 32"):
        build_pipeline(compose_config("export_pipeline", ["model=tiny", f"alignment={tmp_path / 'wide'}"]))
    with pytest.raises(AsukaError, match="not an alignment-module folder"):
        build_pipeline(compose_config("export_pipeline", ["model=tiny", f"alignment={tmp_path / 'nothing'}"]))
