"""The released ASUKA-FLUX recipe (``recipe=official``) and the NCHW input layout, each against an independent
computation: a hand-written BFL-style sampling loop, cv2 itself, the official saving and metric formulas."""
from __future__ import annotations

import math

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import compose_config

from asuka.data.images import pil_to_tensor
from asuka.eval.clip_score import official_hole
from asuka.eval.grad import boundary_gradient_error, official_boundary_gradient_error
from asuka.models.mae_preprocess import cv2_area_resize
from asuka.pipelines.build import build_pipeline
from asuka.pipelines.build_flux import with_recipe
from asuka.pipelines.inpaint_files import recipe_for
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline, truncate_to_pil
from asuka.utils.errors import ConfigError

STEPS = 2
H, W = 48, 80    # a non-square size, multiples of 16


@pytest.fixture(scope="module")
def pipes() -> tuple[AsukaFluxFillPipeline, AsukaFluxFillPipeline]:
    """(ours, official) on the same tiny random parts (built twice: official casts its MAE and heads to bf16)."""
    out = []
    for recipe in ("ours", "official"):
        p = build_pipeline(compose_config("inpaint", ["model=flux_tiny", f"recipe={recipe}"]))
        p.set_progress_bar_config(disable=True)
        out.append(p)
    return out[0], out[1]


def _png_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a blurred (grey) mask, as uint8 arrays read back from PNG-like data."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[12:36, 20:60] = 255
    return image, cv2.GaussianBlur(mask, (0, 0), 2)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_preprocessed_inputs_are_contiguous_nchw(pipes) -> None:
    """numpy_to_pt's channels-last view must not reach the AE: the fill condition from a PIL image equals, bit for
    bit, the one from the contiguous tensor the official loader builds (before the fix: channels-last kernels)."""
    ours, _ = pipes
    image, mask = _png_arrays()
    init, m = ours.preprocess(PIL.Image.fromarray(image), PIL.Image.fromarray(mask))
    assert init.is_contiguous() and m.is_contiguous() and init.stride() == (3 * H * W, H * W, W, 1)
    official = torch.from_numpy(image).float().div(127.5).sub(1.0).permute(2, 0, 1).contiguous()[None]
    assert torch.equal(init, official)
    posterior = ours.vae.encode(init).latent_dist.mode()
    assert torch.equal(posterior, ours.vae.encode(official).latent_dist.mode())
    assert pil_to_tensor(PIL.Image.fromarray(image)).is_contiguous()


def _official_loop(pipe: AsukaFluxFillPipeline, image: np.ndarray, mask01: np.ndarray, seed: int) -> torch.Tensor:
    """test_asuka_flux.py's loop written out: grey mask as is, bf16 noise, bf16 fill, BFL schedule and Euler (one
    generator: the noise, then the posterior sample of the masked image, as the pipeline draws them)."""
    gen = _gen(seed)
    x = torch.from_numpy(image).float().div(127.5).sub(1.0).permute(2, 0, 1).contiguous()[None]
    m = torch.from_numpy(mask01)[None, None]
    txt, vec = pipe.encode_conditions(x, m)
    h, w = H // 8, W // 8
    noise = torch.randn(1, 16, h, w, generator=gen, dtype=torch.bfloat16).float()
    img = noise.reshape(1, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, 64)
    z = pipe.vae.encode(x * (1 - m)).latent_dist.sample(generator=gen)
    z = (z - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    z = z.reshape(1, 16, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, 64)
    mc = m[:, 0].reshape(1, h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(1, 64, h, w)
    mc = mc.reshape(1, 64, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, h * w // 4, 256)
    fill = torch.cat([z, mc], dim=-1).bfloat16().float()
    seq = img.shape[1]
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq - 256)
    ts = [math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if t > 0 else 0.0 for t in np.linspace(1, 0, STEPS + 1)]
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1], ids[..., 2] = torch.arange(h // 2)[:, None], torch.arange(w // 2)[None]
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = pipe.transformer(hidden_states=torch.cat([img, fill], dim=2), timestep=torch.tensor([t]),
                             guidance=torch.tensor([30.0]), pooled_projections=vec, encoder_hidden_states=txt,
                             txt_ids=torch.zeros(txt.shape[1], 3), img_ids=ids.reshape(-1, 3), return_dict=False)[0]
        img = img + (t_next - t) * v
    return img


def test_official_recipe_samples_soft_masks_as_the_official_loop(pipes) -> None:
    ours, official = pipes
    image, mask = _png_arrays()
    grey = mask.astype(np.float32) / 255.0
    assert 0 < np.mean((grey > 0) & (grey < 1))  # a soft mask indeed
    got = official(PIL.Image.fromarray(image), PIL.Image.fromarray(mask), num_inference_steps=STEPS,
                   generator=_gen(1), output_type="latent").images
    want = _official_loop(official, image, grey, seed=1)
    assert (got - want).abs().max() < 1e-4
    binarised = _official_loop(official, image, (grey >= 0.5).astype(np.float32), seed=1)
    assert (got - binarised).abs().max() > 1e-2  # the grey values matter
    assert official.mae.dtype == official.alignment.dtype == torch.bfloat16 and ours.mae.dtype == torch.float32


def test_official_recipe_saves_by_truncation(pipes) -> None:
    _, official = pipes
    image, mask = _png_arrays()
    floats, saved = (official(PIL.Image.fromarray(image), PIL.Image.fromarray(mask), num_inference_steps=STEPS,
                              generator=_gen(2), output_type=kind).images[0] for kind in ("np", "pil"))
    saved = np.asarray(saved)
    assert np.array_equal(saved, np.floor(np.clip(floats * 255, 0, 255)).astype(np.uint8))
    assert np.array_equal(np.asarray(truncate_to_pil(np.array([[[[0.999, 0.5, 1.2]]]]))[0]), [[[254, 127, 255]]])


def test_recipe_switch_is_checked(pipes) -> None:
    ours, official = pipes
    with pytest.raises(ConfigError, match="recipe"):
        build_pipeline(compose_config("inpaint", ["model=flux_tiny", "recipe=released"]))
    with pytest.raises(ConfigError, match="ASUKA-FLUX pipeline only"):
        recipe_for(object(), "official")  # an SD / LAR-Gen pipeline has only recipe=ours
    with pytest.raises(ConfigError, match="recipe=official"):
        with_recipe(official, "ours")
    assert with_recipe(ours, "ours") is ours


def test_cv2_area_resize_calls_cv2_on_upscaled_inputs() -> None:
    """96x80 -> 256: cv2's 8-bit INTER_AREA zoom, value for value."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    want = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)
    got = cv2_area_resize(torch.from_numpy(image).permute(2, 0, 1)[None].float(), 256)[0].permute(1, 2, 0)
    assert np.array_equal(got.numpy().astype(np.uint8), want)


def test_official_grad_and_clip_hole_on_a_grey_mask() -> None:
    """cal_grad.py: composite with the grey mask, Canny on it; cal_clip_score.py: hole = mask // 255."""
    image, mask = _png_arrays(1)
    gt = np.random.default_rng(2).integers(0, 256, image.shape, dtype=np.uint8)
    m = mask[..., None] / 255.0
    result = image * m + gt * (1 - m)
    edges = cv2.Canny(mask, 100, 200) > 0
    want = []
    for c in range(3):
        d = [cv2.Sobel(result[..., c].copy(), cv2.CV_64F, *a, ksize=3) - cv2.Sobel(gt[..., c].copy(), cv2.CV_64F,
                                                                                    *a, ksize=3)
             for a in ((1, 0), (0, 1))]
        want.append(np.sqrt(d[0] ** 2 + d[1] ** 2)[edges].mean())
    got = official_boundary_gradient_error(image, gt, mask)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    binary = (mask >= 128).astype(np.uint8) * 255
    np.testing.assert_allclose(official_boundary_gradient_error(image, gt, binary),
                               boundary_gradient_error(np.where(binary[..., None] > 0, image, gt), gt, binary > 0),
                               rtol=1e-12)
    assert np.array_equal(official_hole(mask), mask == 255) and official_hole(mask).sum() < (mask >= 128).sum()


def test_official_recipe_encodes_the_fill_with_the_release_encoder() -> None:
    """test_asuka_flux.py loads encoder.* of asuka_decoder.ckpt over the FLUX AE: so does recipe=official."""
    from asuka.pipelines.build_flux import build_flux_pipeline

    pipe = build_flux_pipeline(compose_config("inpaint", ["model=flux_tiny"]), random_decoder=True)
    with torch.no_grad():
        for p in pipe.decoder.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    flux_encoder = {k: v.clone() for k, v in pipe.vae.encoder.state_dict().items()}
    official = with_recipe(pipe, "official")
    release = pipe.decoder.encoder.state_dict()
    assert all(torch.equal(v, release[k]) for k, v in official.vae.encoder.state_dict().items())
    assert not all(torch.equal(v, release[k]) for k, v in flux_encoder.items())
    assert official.config.recipe == "official" and official.mae.dtype == torch.bfloat16


def test_official_recipe_round_trips(pipes, tmp_path) -> None:
    """model_index.json keeps the recipe; the reloaded pipeline samples the same latents."""
    from asuka.pipelines.build import load_pipeline

    _, official = pipes
    official.save_pretrained(tmp_path)
    loaded = load_pipeline(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.recipe == "official" and loaded.mae.dtype == loaded.alignment_clip.dtype == torch.bfloat16
    image, mask = _png_arrays()
    runs = [p(PIL.Image.fromarray(image), PIL.Image.fromarray(mask), num_inference_steps=STEPS, generator=_gen(3),
              output_type="latent").images for p in (official, loaded)]
    assert (runs[0] - runs[1]).abs().max() < 1e-5  # as the ours-recipe round trip (test_pipeline_asuka_flux.py)


def test_inpaint_script_under_the_official_recipe_reads_grey_masks(pipes, tmp_path) -> None:
    """``inpaint.py recipe=official``: the mask file's grey values reach the pipeline, the PNG is truncated."""
    from asuka.pipelines.inpaint_files import inpaint

    _, official = pipes
    image, mask = _png_arrays()
    PIL.Image.fromarray(image).save(tmp_path / "image.png")
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    cfg = compose_config("inpaint", ["model=flux_tiny", "recipe=official", f"image={tmp_path / 'image.png'}",
                                     f"mask_file={tmp_path / 'mask.png'}", f"out={tmp_path / 'out.png'}",
                                     f"steps={STEPS}", "seed=4", "trainer.cpu=true"])
    inpaint(cfg)
    want = official(PIL.Image.fromarray(image), mask.astype(np.float32) / 255.0, num_inference_steps=STEPS,
                    generator=_gen(4), output_type="pil").images[0]
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "out.png")), np.asarray(want))


def test_eval_scores_grad_and_clip_hole_as_the_official_scripts(tmp_path) -> None:
    """eval.py recipe=official: per-image Grad from cal_grad.py's formula on the prediction file, equal to ours on
    the (binary) evaluation masks."""
    from asuka.data.datasets import EvalDataset
    from asuka.eval.items import load_items
    from asuka.eval.scoring import _ScoredPairs, to_uint8

    items = load_items(compose_config("eval", ["experiment=demo"]))[:1]
    sample = EvalDataset(items, 64)[0]
    gt8 = to_uint8(sample["image"]).permute(1, 2, 0).numpy()
    pred8 = np.random.default_rng(0).integers(0, 256, gt8.shape, dtype=np.uint8)
    PIL.Image.fromarray(pred8).save(tmp_path / "pred.png")
    mask8 = (sample["mask"][0].numpy() * 255).astype(np.uint8)
    ours, official = (_ScoredPairs(EvalDataset(items, 64), [tmp_path / "pred.png"], items, True, 4, official=o)[0]
                      for o in (False, True))
    assert official["grad"] > 0 and official["grad"] == pytest.approx(
        official_boundary_gradient_error(pred8, gt8, mask8).mean(), rel=1e-12)
    assert official["grad"] == pytest.approx(ours["grad"], rel=1e-9) and torch.equal(official["clip_pred"],
                                                                                      ours["clip_pred"])


def test_eval_official_recipe_keeps_grey_masks_to_the_metrics(tmp_path) -> None:
    """eval.py recipe=official reads a blurred mask file as gray / 255 (not >= 128) and scores Grad with the grey
    mask, as cal_grad.py does; ours binarises. method=sd refuses the official recipe in one line."""
    from asuka.data.datasets import EvalDataset
    from asuka.data.sources import ImageItem
    from asuka.eval.run import _validate
    from asuka.eval.scoring import _ScoredPairs, to_uint8

    rng = np.random.default_rng(1)
    scene = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    grey = np.zeros((48, 48), np.uint8)
    grey[12:36, 12:36] = 255
    grey = cv2.GaussianBlur(grey, (9, 9), 3)
    PIL.Image.fromarray(scene).save(tmp_path / "img.png")
    PIL.Image.fromarray(grey).save(tmp_path / "mask.png")
    items = [ImageItem(image=tmp_path / "img.png", mask=tmp_path / "mask.png", domain=None, name="img")]
    soft, hard = EvalDataset(items, None, soft=True)[0], EvalDataset(items, None)[0]
    assert np.array_equal(soft["mask"][0].numpy(), grey.astype(np.float32) / 255)
    assert np.array_equal(hard["mask"][0].numpy(), (grey >= 128).astype(np.float32))
    pred8 = rng.integers(0, 256, scene.shape, dtype=np.uint8)
    PIL.Image.fromarray(pred8).save(tmp_path / "pred.png")
    official = _ScoredPairs(EvalDataset(items, None, soft=True), [tmp_path / "pred.png"], items, True, 4,
                            official=True)[0]
    gt8 = to_uint8(soft["image"]).permute(1, 2, 0).numpy()
    mask8 = (soft["mask"][0] * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(mask8, grey)
    assert official["grad"] == pytest.approx(official_boundary_gradient_error(pred8, gt8, grey).mean(), rel=1e-12)
    binary = official_boundary_gradient_error(pred8, gt8, (grey >= 128).astype(np.uint8) * 255).mean()
    assert abs(official["grad"] - binary) > 1e-3  # the grey mask, not a binarised one, reached the metric
    with pytest.raises(ConfigError, match="recipe"):
        _validate(compose_config("eval", ["experiment=demo", "method=sd", "recipe=official"]))
