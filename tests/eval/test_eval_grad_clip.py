"""Grad and CLIP: reference values from other libraries (OpenCV's recorded Canny output, scipy's Sobel,
torchvision's CLIP preprocessing), and both metrics in an evaluation's result files."""
from __future__ import annotations

import csv
import json

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage
import torch
import torchvision.transforms as T

from asuka.eval.clip_score import CLIP_MEAN, CLIP_STD, build_clip, clip_preprocess, clip_similarity, hole_pair
from asuka.eval.grad import boundary_gradient_error, mask_edges, sobel
from asuka.utils.errors import ConfigError

# A 12x14 mask (an ellipse and a blob on the border) and the edges OpenCV 5.0's cv2.Canny(mask * 255, 100, 200)
# returned for it (recorded once; OpenCV is not a dependency).
MASK_ROWS = ['11000000000000', '11000000000000', '11000111110000', '00001111111000', '00011111111100', '00011111111100',
             '00011111111100', '00011111111100', '00001111111000', '00000111110000', '00000000000000', '00000000000000']
CV2_EDGE_ROWS = ['01000000000000', '01000011100000', '11001100011000', '00011000001100', '00010000000100',
                 '00100000000100', '00100000000100', '00010000000100', '00011000001100', '00001111111000',
                 '00000000000000', '00000000000000']


def _bits(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows])


def test_mask_edges_equal_opencv_canny():
    np.testing.assert_array_equal(mask_edges(_bits(MASK_ROWS)), _bits(CV2_EDGE_ROWS))


def test_mask_edges_of_a_rectangle():
    """Straight sides: OpenCV keeps the first of the two equal responses, i.e. the known row above / column left of
    the hole and the hole's own last row / column."""
    m = np.zeros((40, 50), bool)
    m[10:30, 15:40] = True
    e = mask_edges(m)
    assert e[9, 17:38].all() and not e[10, 17:38].any()       # top: outside
    assert e[29, 17:38].all() and not e[30, 17:38].any()      # bottom: inside
    assert e[12:28, 14].all() and not e[12:28, 15].any()      # left: outside
    assert e[12:28, 39].all() and not e[12:28, 40].any()      # right: inside
    assert not mask_edges(np.zeros((8, 8), bool)).any() and not mask_edges(np.ones((8, 8), bool)).any()


def test_sobel_equals_scipy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (17, 23)).astype(np.float64)
    gx, gy = sobel(image)
    np.testing.assert_allclose(gx, scipy.ndimage.sobel(image, axis=1, mode="mirror"), atol=1e-9)
    np.testing.assert_allclose(gy, scipy.ndimage.sobel(image, axis=0, mode="mirror"), atol=1e-9)


def test_grad_on_a_known_image():
    """Composite = gt outside the hole, a flat 200 inside; the Sobel difference is computed here with scipy and
    averaged over OpenCV's recorded edges."""
    hole = _bits(MASK_ROWS)
    yy, xx = np.mgrid[:12, :14]
    gt = np.stack([xx * 10.0, yy * 7.0 + 3, (xx * yy) % 50.0], -1)
    result = np.where(hole[..., None], 200.0, gt)
    want = []
    for c in range(3):
        d = [scipy.ndimage.sobel(result[..., c], axis=a, mode="mirror") -
             scipy.ndimage.sobel(gt[..., c], axis=a, mode="mirror") for a in (1, 0)]
        want.append(np.hypot(*d)[_bits(CV2_EDGE_ROWS)].mean())
    got = boundary_gradient_error(result, gt, hole)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.min() > 10
    np.testing.assert_array_equal(boundary_gradient_error(gt, gt, hole), 0.0)           # perfect fill
    np.testing.assert_array_equal(boundary_gradient_error(result, gt, np.zeros_like(hole)), 0.0)  # no edge: 0


@pytest.mark.parametrize("shape", [(64, 64, 3), (40, 70, 3), (71, 33, 3)])
def test_clip_preprocess_equals_openai_clip_transform(shape):
    """OpenAI CLIP's preprocess is torchvision Resize(224, bicubic), CenterCrop(224), ToTensor, Normalize."""
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize(CLIP_MEAN, CLIP_STD)])(PIL.Image.fromarray(image))
    torch.testing.assert_close(clip_preprocess(image), ref, atol=1e-6, rtol=0)


def test_clip_similarity_and_local_weights(tmp_path):
    model, info = build_clip("random", None, seed=0)
    assert info["weights"] == "random"
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pred = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    hole = np.zeros((32, 32), bool)
    hole[8:24, 4:20] = True
    p, g = hole_pair(pred, gt, hole)
    torch.testing.assert_close(p, clip_preprocess(np.where(hole[..., None], pred, 0).astype(np.uint8)))
    sims = clip_similarity(model, torch.stack([p, g]), torch.stack([g, g]))
    with torch.no_grad():
        emb = model(pixel_values=torch.stack([p, g])).image_embeds
    np.testing.assert_allclose(sims[0], torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0).item(),
                               atol=1e-5)
    assert abs(sims[1] - 1.0) < 1e-5 and sims[0] < sims[1]
    model.save_pretrained(tmp_path / "clip")
    loaded, info = build_clip("pretrained", tmp_path / "clip")
    np.testing.assert_allclose(clip_similarity(loaded, p[None], g[None]), sims[:1], atol=1e-5)
    with pytest.raises(ConfigError, match="paths.clip"):
        build_clip("pretrained", tmp_path / "missing")


def test_eval_writes_grad_and_clip(tmp_path):
    """experiment=demo method=asuka_flux: the eight metrics in results.json/md, Grad per image = the metric on the
    written prediction composited with the ground truth."""
    from conftest import compose_config

    from asuka.data.datasets import EvalDataset
    from asuka.data.images import load_image, pil_to_tensor
    from asuka.eval.items import load_items
    from asuka.eval.run import evaluate
    from asuka.eval.scoring import composite, to_uint8

    cfg = compose_config("eval", ["experiment=demo", "method=asuka_flux", "metrics.cache_dir=null",
                                  "num_inference_steps=1", "resolution=32"])
    results = evaluate(cfg, tmp_path)
    overall = results["metrics"]
    for key in ("fid", "u_ids", "p_ids", "psnr", "ssim", "lpips", "grad", "clip"):
        assert overall[key] is not None and np.isfinite(overall[key]), key
    assert "| grad | clip |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["clip"]["weights"] == "random"
    rows = list(csv.DictReader(open(tmp_path / "per_image.csv")))
    items = load_items(cfg)
    sample = EvalDataset(items, 32)[0]
    pred = pil_to_tensor(load_image(rows[0]["prediction"]))[None]
    gt, mask = sample["image"][None], sample["mask"][None]
    comp = to_uint8(composite(pred, gt, mask))[0].permute(1, 2, 0).numpy()
    want = boundary_gradient_error(comp, to_uint8(gt)[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy() >= 0.5)
    assert abs(float(rows[0]["grad"]) - want.mean()) < 1e-6
    np.testing.assert_allclose(overall["grad"], np.mean([float(r["grad"]) for r in rows]), rtol=1e-9)
