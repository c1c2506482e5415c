"""The mixed mask generator: the paper's 50/40/10 mix, hole ratios inside the range, determinism by seed, object
sources, and config errors."""
from __future__ import annotations

import json
import pickle
import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from asuka.data.masks import (
    KINDS,
    CocoObjectShapes,
    CoModIrregular,
    ComplementRectangleMask,
    LamaIrregular,
    MixedMaskGenerator,
    RectangleMask,
    SyntheticObjectShapes,
    build_mask_generator,
    clip_hole_ratio,
)
from asuka.data.seeding import sample_rng
from asuka.utils.errors import ConfigError, DataError
from data_helpers import preset_config, preset_generator

SIZE = 128


def _draws(gen, n, size=SIZE, seed=0):
    return [gen(sample_rng(seed, 0, i), size, size) for i in range(n)]


@pytest.fixture(scope="module")
def mixed_draws():
    gen = preset_generator("mixed")
    return gen, _draws(gen, 2000)


def test_paper_mix_over_2000_draws(mixed_draws):
    gen, draws = mixed_draws
    counts = Counter(kind for _, kind in draws)
    assert set(counts) <= set(KINDS)
    share = {k: counts[k] / len(draws) for k in KINDS}
    objects = share["object"] + share["object+irregular"]
    assert abs(objects - 0.5) <= 0.03
    assert abs(share["irregular"] - 0.4) <= 0.03
    assert abs(share["rectangle"] + share["complement_rectangle"] - 0.1) <= 0.03
    assert abs(share["object+irregular"] / objects - 0.5) <= 0.05  # the union: half of the object draws
    assert abs(share["complement_rectangle"] - 0.05) <= 0.02


def test_hole_ratio_inside_the_training_range(mixed_draws):
    gen, draws = mixed_draws
    lo, hi = gen.hole_range
    assert (lo, hi) == (0.05, 0.75)
    ratios = np.array([mask.mean() for mask, _ in draws])
    assert ratios.min() >= lo and ratios.max() <= hi
    assert all(mask.dtype == bool and mask.shape == (SIZE, SIZE) for mask, _ in draws)
    assert gen.clipped <= 0.01 * len(draws)  # the range is reached by resampling, not by the clip fallback
    assert np.percentile(ratios, 90) - np.percentile(ratios, 10) > 0.3  # a real spread, not one size


def test_eval_preset_no_rectangles_and_ratio_range():
    gen = preset_generator("eval")
    assert gen.hole_range == (0.2, 0.8)
    draws = _draws(gen, 1000, seed=5)
    kinds = Counter(kind for _, kind in draws)
    assert kinds["rectangle"] == 0 and kinds["complement_rectangle"] == 0
    assert kinds["object"] > 0 and kinds["object+irregular"] > 0 and kinds["irregular"] > 0
    ratios = np.array([mask.mean() for mask, _ in draws])
    assert ratios.min() >= 0.2 and ratios.max() <= 0.8


def test_same_seed_same_masks_and_no_global_rng():
    gen = preset_generator("mixed")
    np.random.seed(123)
    random.seed(123)
    state_np, state_py = np.random.get_state()[1].copy(), random.getstate()
    a = _draws(gen, 30, size=64, seed=7)
    b = _draws(preset_generator("mixed"), 30, size=64, seed=7)
    assert all(ka == kb and np.array_equal(ma, mb) for (ma, ka), (mb, kb) in zip(a, b))
    c = _draws(gen, 30, size=64, seed=8)
    assert not all(np.array_equal(ma, mc) for (ma, _), (mc, _) in zip(a, c))
    assert np.array_equal(np.random.get_state()[1], state_np) and random.getstate() == state_py


@pytest.mark.parametrize("gen", [CoModIrregular((0.05, 0.75)), LamaIrregular(), RectangleMask(),
                                 ComplementRectangleMask()], ids=lambda g: type(g).__name__)
def test_components_any_shape(gen):
    for i in range(5):
        mask = gen(sample_rng(0, 0, i), 48, 80)
        assert mask.dtype == bool and mask.shape == (48, 80)


def test_clip_fallback_guarantees_range():
    rng = np.random.default_rng(0)
    empty, full = np.zeros((50, 60), bool), np.ones((50, 60), bool)
    assert clip_hole_ratio(empty, rng, 0.2, 0.8).mean() >= 0.2
    assert clip_hole_ratio(full, rng, 0.2, 0.8).mean() <= 0.8
    gen = MixedMaskGenerator(probs={"irregular": 1.0}, hole_range=(0.3, 0.7), max_tries=1)
    for i in range(40):
        mask, _ = gen(sample_rng(0, 0, i), 64, 64)
        assert 0.3 <= mask.mean() <= 0.7
    assert gen.clipped > 0  # one try only: some draws needed the fallback


def test_object_masks_from_a_folder(tmp_path):
    for i in range(3):
        arr = np.zeros((40, 50), np.uint8)
        arr[5 + i:25, 10:30 + i] = 255
        Image.fromarray(arr, mode="L").save(tmp_path / f"obj{i}.png")
    Image.fromarray(np.zeros((40, 50), np.uint8), mode="L").save(tmp_path / "empty.png")  # skipped
    mask_cfg, _ = preset_config("mixed")
    gen = build_mask_generator(mask_cfg, {"coco_instances": None, "object_masks": str(tmp_path)})
    assert type(gen._objects.source).__name__ == "FolderObjectShapes"
    only_objects = MixedMaskGenerator(probs={"object": 1.0}, object_union_prob=0.0,
                                      object_source=gen._objects.source)
    for mask, kind in _draws(only_objects, 20, size=64):
        assert kind == "object" and 0.05 <= mask.mean() <= 0.75
    with pytest.raises(DataError, match="object mask folder not found"):
        build_mask_generator(mask_cfg, {"coco_instances": None, "object_masks": str(tmp_path / "nope")})


def test_object_masks_from_coco_instances(tmp_path):
    coco = {
        "images": [{"id": 1, "height": 60, "width": 80, "file_name": "a.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 600.0, "bbox": [10, 10, 30, 20],
             "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 2.0, "bbox": [0, 0, 1, 2],
             "segmentation": [[0, 0, 1, 0, 1, 2, 0, 2]]},  # below min_area: never drawn
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    source = CocoObjectShapes(path)
    shape = source.sample(np.random.default_rng(0))
    assert shape.mask.shape == (20, 30) and shape.mask.all()  # the 30x20 rectangle polygon, cropped to its box
    assert shape.rel_height == pytest.approx(20 / 60) and shape.rel_width == pytest.approx(30 / 80)
    mask_cfg, _ = preset_config("mixed")
    gen = build_mask_generator(mask_cfg, {"coco_instances": str(path), "object_masks": None})
    mask, _ = gen(sample_rng(0, 0, 0), 64, 64)
    assert mask.shape == (64, 64)
    with pytest.raises(DataError, match="COCO instances file not found"):
        CocoObjectShapes(tmp_path / "missing.json")


def test_synthetic_shapes_are_the_labelled_default(caplog):
    mask_cfg, paths_cfg = preset_config("mixed")
    with caplog.at_level("WARNING"):
        gen = build_mask_generator(mask_cfg, paths_cfg)
    assert isinstance(gen._objects.source, SyntheticObjectShapes)
    assert "SYNTHETIC" in caplog.text


def test_config_errors():
    mask_cfg, paths_cfg = preset_config("mixed")
    with pytest.raises(ConfigError, match="mask.colour"):
        build_mask_generator({**_plain(mask_cfg), "colour": 1}, paths_cfg)
    with pytest.raises(ConfigError, match="mask.hole_range"):
        MixedMaskGenerator(hole_range=(0.8, 0.2))
    with pytest.raises(ConfigError, match="mask.probs"):
        MixedMaskGenerator(probs={"object": 1.0, "blobs": 1.0})
    with pytest.raises(ConfigError, match="mask.comod"):
        MixedMaskGenerator(comod={"brushes": 3})
    with pytest.raises(ConfigError, match="not both"):
        build_mask_generator(mask_cfg, {"coco_instances": "a.json", "object_masks": "dir"})


def test_generator_pickles_for_dataloader_workers():
    gen = preset_generator("mixed")
    clone = pickle.loads(pickle.dumps(gen))
    for i in range(5):
        (a, ka), (b, kb) = gen(sample_rng(1, 2, i), 40, 40), clone(sample_rng(1, 2, i), 40, 40)
        assert ka == kb and np.array_equal(a, b)


def test_raw_eval_yaml_is_refused(repo):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="mask.defaults"):
        build_mask_generator(OmegaConf.load(repo / "configs" / "mask" / "eval.yaml"), {"coco_instances": None})


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=False)


# Hole-ratio mean and standard deviation per part at 128 px under generator version 2, from 4,000 seeded draws each
# (sample_rng(11, 0, i), synthetic object shapes). Versions 3 and 4 changed how the masks are drawn, not what is
# drawn.
V2_HOLE_STATS = {"comod": (0.5574, 0.1903), "lama": (0.3306, 0.1851), "objects": (0.1557, 0.1028),
                 "mix": (0.3645, 0.2096)}


def test_hole_ratio_distribution_matches_version_2():
    """1,000 fresh draws per part: mean and spread of the hole ratio within 4 standard errors of version 2's (the
    error of the difference, reference included), and Co-Mod masks symmetric left-right and up-down (its strokes
    drift one way; only the random flips make the average mask symmetric)."""
    n, ref_n = 1000, 4000
    gen = preset_generator("mixed")
    parts = {"comod": gen._comod, "lama": gen._lama, "objects": gen._objects,
             "mix": lambda rng, h, w: gen(rng, h, w)[0]}
    for name, part in parts.items():
        masks = [part(sample_rng(3, 0, i), SIZE, SIZE) for i in range(n)]
        assert all(m.flags.c_contiguous and m.dtype == bool for m in masks)  # no flipped views handed on
        ratios = np.array([m.mean() for m in masks])
        mean, sd = V2_HOLE_STATS[name]
        assert abs(ratios.mean() - mean) <= 4 * sd * np.sqrt(1 / n + 1 / ref_n), (name, ratios.mean())
        assert abs(ratios.std() - sd) <= 4 * sd * np.sqrt(1 / (2 * n) + 1 / (2 * ref_n)), (name, ratios.std())
        if name == "comod":
            stack = np.stack(masks)
            for axis in (1, 2):  # rows (up-down), columns (left-right)
                first, second = np.split(stack, 2, axis=axis)
                diff = first.mean(axis=(1, 2)) - second.mean(axis=(1, 2))
                assert abs(diff.mean()) <= 4 * diff.std() / np.sqrt(n), (axis, diff.mean())


def _distance_to_polyline(points: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel centre to the polyline through ``points`` (x, y)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    best = np.full((size, size), np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
        best = np.minimum(best, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return best


def test_thick_polyline_is_segments_with_round_joins():
    """Every pixel within width/2 - 1 of the polyline is inked, none beyond (width + 1)/2 + 1 (round caps and joins,
    the shape Co-Mod draws as line + one disc per vertex; OpenCV rounds an odd width's radius up)."""
    from asuka.data.masks.strokes import canvas, thick_polyline

    points = np.array([[10, 50], [40, 12], [60, 70], [90, 30]], dtype=np.int32)
    for width in (3, 12, 25):
        arr = canvas(100, 100)
        thick_polyline(arr, points, width)
        dist = _distance_to_polyline(points.astype(np.float64), 100)
        assert arr.max() == 1
        assert arr[dist <= width / 2 - 1].all(), width
        assert not arr[dist > (width + 1) / 2 + 1].any(), width


def test_fill_polygon_matches_point_in_polygon():
    """Pixels more than a pixel inside the scaled, offset polygon are inked, more than a pixel outside are not
    (even-odd ray casting as the independent reference)."""
    from asuka.data.masks.strokes import canvas, fill_polygon

    unit = np.array([[0.0, 0.2], [0.7, 0.0], [1.0, 0.9], [0.3, 1.0], [0.45, 0.5]])
    scale, offset = (-50.0, 40.0), (70.0, 15.0)  # a mirrored x axis, as a flipped object is placed
    arr = canvas(80, 80)
    fill_polygon(arr, unit, scale, offset)
    poly = unit * scale + offset
    ys, xs = np.mgrid[0:80, 0:80].astype(np.float64)
    inside = np.zeros((80, 80), dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y0 > ys) != (y1 > ys)
        inside ^= crosses & (xs < x0 + (ys - y0) * (x1 - x0) / np.where(y1 != y0, y1 - y0, 1))
    edge = _distance_to_polyline(np.vstack([poly, poly[:1]]), 80) <= 1.0
    assert inside.sum() > 500
    assert arr[inside & ~edge].all() and not arr[~inside & ~edge].any()


def test_bitmap_object_is_placed_nearest_and_mirrored():
    """A silhouette bitmap shrunk or enlarged up to 2x samples the nearest source pixel centre (the numpy formula
    below), is mirrored left-right by ``flip`` and OR-ed into the mask at its box; enlarged more than 2x it is
    interpolated, so its edges move by at most a source pixel."""
    from asuka.data.masks import ObjectShape
    from asuka.data.masks.strokes import canvas

    src = np.random.default_rng(0).random((13, 17)) < 0.5
    shape = ObjectShape(0.5, 0.5, mask=src)
    for (h, w), flip in (((20, 25), False), ((20, 25), True), ((9, 11), True)):
        mask = canvas(40, 40).view(bool)
        mask[0, 0] = True  # outside the box: kept
        shape.paint(mask, 5, 7, h, w, flip)
        rows = np.floor((np.arange(h) + 0.5) * 13 / h).astype(int)
        cols = np.floor((np.arange(w) + 0.5) * 17 / w).astype(int)
        expected = src[rows][:, cols]
        assert np.array_equal(mask[5:5 + h, 7:7 + w], expected[:, ::-1] if flip else expected), (h, w, flip)
        assert mask[0, 0] and mask.sum() == expected.sum() + 1
    big = canvas(80, 80).view(bool)
    shape.paint(big, 0, 0, 65, 70, False)  # 4550 > 4 x 221 source pixels: bilinear, rounded
    rows = np.floor((np.arange(65) + 0.5) * 13 / 65).astype(int)
    cols = np.floor((np.arange(70) + 0.5) * 17 / 70).astype(int)
    assert (big[:65, :70] != src[rows][:, cols]).mean() < 0.25 and not big[65:].any() and not big[:, 70:].any()
