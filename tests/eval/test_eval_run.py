"""The evaluation run: file matching, compositing, size checks, the result files and the feature cache."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.eval import features as F
from asuka.eval.items import match_predictions
from asuka.eval.run import evaluate
from asuka.eval.scoring import composite, to_uint8
from asuka.utils.errors import DataError
from conftest import compose_config

N_IMAGES = 6
SIZE = 64


def _make_folder(root: Path, n: int = N_IMAGES, size: int = SIZE, names: list[str] | None = None,
                 misato: bool = False) -> dict[str, Path]:
    """Ground truth, masks and predictions with holes of different sizes; predictions differ only in the hole.

    ``misato`` lays the ground truth out as MISATO does (``root/image``, ``root/mask``)."""
    rng = np.random.default_rng(0)
    names = names or [f"img{i:02d}" for i in range(n)]
    sub = {"images": "image", "masks": "mask", "preds": "preds"} if misato else {}
    dirs = {k: root / sub.get(k, k) for k in ("images", "masks", "preds")}
    for d in dirs.values():
        d.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([xx * (50 + 20 * i), yy * 200, (xx + yy) * 60 + 10 * i], -1)
        gt = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        side = 10 + 7 * i
        mask[5:5 + side, 8:8 + side] = 255
        pred = gt.copy()
        pred[mask > 0] = rng.integers(0, 256, size=(int((mask > 0).sum()), 3), dtype=np.uint8)
        pred[mask == 0] = np.clip(gt[mask == 0].astype(int) + 3, 0, 255)  # outside the hole: removed by compositing
        Image.fromarray(gt).save(dirs["images"] / f"{names[i]}.png")
        Image.fromarray(mask).save(dirs["masks"] / f"{names[i]}.png")
        Image.fromarray(pred).save(dirs["preds"] / f"{names[i]}.png")
    return dirs


def _cfg(dirs: dict[str, Path], tmp_path: Path, *extra: str, dataset: list[str] | None = None):
    dataset = dataset or ["dataset=folder", f"dataset.root={dirs['images']}", f"dataset.mask_root={dirs['masks']}"]
    return compose_config("eval", [
        *dataset, "method=predictions", f"predictions_dir={dirs['preds']}", "metrics.weights=random",
        f"metrics.cache_dir={tmp_path / 'cache'}", f"resolution={SIZE}", "batch_size=4", "trainer.cpu=true",
        "trainer.num_workers=0", *extra])


def test_missing_and_extra_predictions_are_both_named(tmp_path):
    for name in ("a", "b", "extra1"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    with pytest.raises(DataError) as err:
        match_predictions(["a", "b", "c", "d"], tmp_path)
    msg = str(err.value)
    assert "c, d" in msg and "extra1.png" in msg and "\n" not in msg
    assert match_predictions(["b", "extra1", "a"], tmp_path) == [tmp_path / n for n in ("b.png", "extra1.png", "a.png")]
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with pytest.raises(DataError, match="share a name"):
        match_predictions(["a", "b", "extra1"], tmp_path)


def test_composite_keeps_known_pixels_exactly():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    pred = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float() * 0.9  # soft values: binarised at 0.5
    out = composite(pred, gt, mask)
    hole = (mask >= 0.5).expand_as(gt)
    assert torch.equal(out[~hole], gt[~hole]) and torch.equal(out[hole], pred[hole])
    assert torch.equal(to_uint8(out)[~hole], to_uint8(gt)[~hole])


@pytest.mark.slow
def test_evaluate_end_to_end_with_random_weights(tmp_path):
    dirs = _make_folder(tmp_path / "data")
    cfg = _cfg(dirs, tmp_path, "metrics.min_images_for_fid=3")
    run_dir = tmp_path / "run"
    results = evaluate(cfg, run_dir)

    for name in ("results.json", "results.md", "per_image.csv"):
        assert (run_dir / name).is_file()
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk == results
    m = results["metrics"]
    for key in ("lpips", "fid", "u_ids", "p_ids", "psnr", "ssim", "color_error"):
        assert m[key] is not None and math.isfinite(m[key]), key
    assert m["count"] == N_IMAGES and m["fid"] > 0 and 0 <= m["u_ids"] <= 0.5 and 0 <= m["p_ids"] <= 1
    meta = results["meta"]
    assert meta["weights"] == "random" and meta["inception_weights_sha256"] == "random"
    assert meta["lpips"]["trunk_sha256"] == "random" and "RANDOM" in meta["warning"]
    assert meta["image_count"] == N_IMAGES and meta["resolution"] == SIZE and meta["composite"] is True
    assert meta["variant"] == "tf_inception" and meta["method"] == "predictions" and meta["dataset"] == "folder"
    assert meta["versions"]["torch"] and meta["resize_mode"]
    assert "RANDOM WEIGHTS" in (run_dir / "results.md").read_text()
    # area bins: every image in one bin; FID only where a bin has enough images
    bins = results["by_area"]
    assert sum(b["count"] for b in bins.values()) == N_IMAGES
    assert all((b["fid"] is None) == (b["count"] < 3) for b in bins.values())
    assert "by_domain" not in results
    with open(run_dir / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [f"img{i:02d}" for i in range(N_IMAGES)]
    assert all(float(r["lpips"]) > 0 and float(r["psnr"]) > 0 for r in rows)


@pytest.mark.slow
def test_second_run_reads_features_from_the_cache(tmp_path, monkeypatch):
    """On MISATO's layout, with two domains; the second run computes no Inception features at all."""
    dirs = _make_folder(tmp_path / "misato", n=4, names=["0000", "0001", "0500", "0501"], misato=True)
    cfg = _cfg(dirs, tmp_path, "metrics.min_images_for_fid=2",
               dataset=["dataset=misato", f"dataset.root={tmp_path / 'misato'}"])
    calls = {"n": 0}
    original = F.InceptionFeatures.forward

    def counting(self, images):
        calls["n"] += 1
        return original(self, images)

    monkeypatch.setattr(F.InceptionFeatures, "forward", counting)
    first = evaluate(cfg, tmp_path / "run1")
    assert calls["n"] > 0 and not first["meta"]["feature_cache"]["ground_truth_hit"]
    assert first["meta"]["dataset"] == "misato"
    assert {k: v["count"] for k, v in first["by_domain"].items()} == {"indoor": 2, "landscape": 2}
    assert all(v["fid"] is not None and v["p_ids"] is not None for v in first["by_domain"].values())
    assert "By domain" in (tmp_path / "run1" / "results.md").read_text()
    calls["n"] = 0
    second = evaluate(cfg, tmp_path / "run2")
    assert calls["n"] == 0
    assert second["meta"]["feature_cache"]["ground_truth_hit"] and second["meta"]["feature_cache"]["predictions_hit"]
    # the same features (exact bytes from the cache) through FID/IDS again: equal up to float noise of the kernels
    assert second["metrics"]["fid"] == pytest.approx(first["metrics"]["fid"], rel=1e-6)
    assert second["metrics"]["p_ids"] == pytest.approx(first["metrics"]["p_ids"], rel=1e-6, abs=1e-9)
    # a changed prediction recomputes that set only; the ground truth stays cached
    img = Image.open(dirs["preds"] / "0000.png")
    img.transpose(Image.FLIP_LEFT_RIGHT).save(dirs["preds"] / "0000.png")
    third = evaluate(cfg, tmp_path / "run3")
    assert calls["n"] > 0
    assert third["meta"]["feature_cache"]["ground_truth_hit"] and not third["meta"]["feature_cache"]["predictions_hit"]


def test_prediction_of_the_wrong_size_names_the_file(tmp_path):
    dirs = _make_folder(tmp_path / "data", n=2)
    Image.new("RGB", (SIZE // 2, SIZE // 2)).save(dirs["preds"] / "img01.png")
    with pytest.raises(DataError, match="img01.png") as err:
        evaluate(_cfg(dirs, tmp_path), tmp_path / "run")
    assert "\n" not in str(err.value)


def test_predictions_method_needs_a_folder(tmp_path):
    from asuka.utils.errors import ConfigError

    dirs = _make_folder(tmp_path / "data", n=2)
    cfg = _cfg(dirs, tmp_path, "predictions_dir=null")
    with pytest.raises(ConfigError, match="predictions_dir"):
        evaluate(cfg, tmp_path / "run")


def test_eval_config_composes_for_every_dataset_and_method():
    for dataset in ("places2", "misato", "folder", "samples"):
        for method in ("asuka", "sd", "sd_text", "predictions"):
            cfg = compose_config("eval", [f"dataset={dataset}", f"method={method}"])
            assert cfg.method.name == method and cfg.dataset.name == dataset
    cfg = compose_config("eval", ["method=sd_text"])
    assert cfg.method.prompt == "background" and cfg.metrics.variant == "tf_inception"
    assert cfg.hydra.run.dir.startswith("outputs/eval/places2/")


@pytest.mark.slow
def test_generation_is_resumable_and_seeded_per_image(tmp_path, monkeypatch):
    """method=sd with tiny random SD: every image written once; a deleted one comes back the same."""
    from asuka.eval import generate as gen_mod
    from asuka.eval.items import load_items

    dirs = _make_folder(tmp_path / "data", n=3)
    cfg = _cfg(dirs, tmp_path, "model=tiny", "method=sd", "num_inference_steps=2", "batch_size=2")
    items = load_items(cfg)
    out = tmp_path / "preds"
    gen_mod.generate_predictions(cfg, items, out)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["img00.png", "img01.png", "img02.png"]
    before = np.asarray(Image.open(out / "img01.png"), dtype=np.int16)
    assert before.shape == (SIZE, SIZE, 3)

    calls = []
    build = gen_mod._build_generator_pipeline

    def counting_build(cfg_, device):
        pipe = build(cfg_, device)

        def call(**kwargs):
            calls.append(len(kwargs["image"]))
            return pipe(**kwargs)
        return call

    monkeypatch.setattr(gen_mod, "_build_generator_pipeline", counting_build)
    (out / "img01.png").unlink()
    gen_mod.generate_predictions(cfg, items, out)
    assert calls == [1]                          # only the missing image is generated again
    after = np.asarray(Image.open(out / "img01.png"), dtype=np.int16)
    assert np.abs(after - before).max() <= 2     # seed + index, whatever the batch it falls in
    calls.clear()
    gen_mod.generate_predictions(cfg, items, out)
    assert calls == []


@pytest.mark.slow
def test_evaluate_generates_with_the_tiny_asuka_pipeline(tmp_path):
    dirs = _make_folder(tmp_path / "data", n=3)
    cfg = _cfg(dirs, tmp_path, "model=tiny", "method=asuka", "num_inference_steps=2", "predictions_dir=null")
    results = evaluate(cfg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "predictions").iterdir()) == [
        "img00.png", "img01.png", "img02.png"]
    assert results["meta"]["method"] == "asuka" and results["meta"]["num_inference_steps"] == 2
    assert math.isfinite(results["metrics"]["fid"]) and math.isfinite(results["metrics"]["lpips"])


def test_missing_metric_weights_fail_before_any_work(tmp_path, monkeypatch):
    from asuka.eval import run as run_mod
    from asuka.utils.errors import AsukaError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setattr(run_mod, "load_items", lambda cfg: pytest.fail("data loaded before the weights check"))
    dirs = _make_folder(tmp_path / "data", n=1)
    with pytest.raises(AsukaError, match="weights-inception-2015-12-05-6726825d.pth"):
        evaluate(_cfg(dirs, tmp_path, "metrics.weights=pretrained"), tmp_path / "run")


@pytest.mark.parametrize("name", ["/../../escaped.png", "../x"])
def test_generation_never_writes_outside_the_predictions_folder(tmp_path, name):
    """Issue 22 item 5: an item name that climbs out is refused before a pipeline is built or a file written."""
    from omegaconf import OmegaConf

    from asuka.data.sources import ImageItem
    from asuka.eval.generate import generate_predictions

    cfg = OmegaConf.create({"trainer": {"cpu": True}, "resolution": 8, "method": {"name": "sd"}})
    out = tmp_path / "run" / "predictions"
    with pytest.raises(DataError, match="must be a path inside"):
        generate_predictions(cfg, [ImageItem(tmp_path / "a.png", tmp_path / "m.png", None, name)], out)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []


def test_predictions_made_with_other_settings_are_never_reused(tmp_path, monkeypatch):
    """Two eval.py runs in one folder: method=sd after method=asuka (or other steps) is refused in one line,
    overwrite=true generates again; the same settings reuse what is there."""
    from asuka.eval import generate as gen_mod
    from asuka.eval.items import load_items
    from asuka.utils.errors import ConfigError

    dirs = _make_folder(tmp_path / "data", n=2)
    asuka_cfg = _cfg(dirs, tmp_path, "model=tiny", "method=asuka", "num_inference_steps=2")
    items = load_items(asuka_cfg)
    out = tmp_path / "run" / "predictions"
    gen_mod.generate_predictions(asuka_cfg, items, out)
    first = (out / "img00.png").read_bytes()
    for other in ("method=sd", "num_inference_steps=3", "seed=1"):
        cfg = _cfg(dirs, tmp_path, "model=tiny", "method=asuka", "num_inference_steps=2", other)
        with pytest.raises(ConfigError, match=r"holds 2 predictions made with other settings .*overwrite=true"):
            gen_mod.generate_predictions(cfg, items, out)
    assert (out / "img00.png").read_bytes() == first
    calls = []
    build = gen_mod._build_generator_pipeline
    monkeypatch.setattr(gen_mod, "_build_generator_pipeline", lambda c, d: calls.append(c.method.name) or build(c, d))
    gen_mod.generate_predictions(asuka_cfg, items, out)  # the same settings: reused, nothing generated
    assert calls == []
    gen_mod.generate_predictions(_cfg(dirs, tmp_path, "model=tiny", "method=sd", "num_inference_steps=2",
                                      "overwrite=true"), items, out)
    assert calls == ["sd"] and sorted(p.name for p in out.iterdir()) == ["img00.png", "img01.png"]
    assert '"name": "sd"' in (tmp_path / "run" / "predictions.settings.json").read_text()


def test_metrics_include_defaults_per_family_and_clip_weights_only_when_asked(monkeypatch):
    """The SD family's table needs no CLIP folder (issue 23); ASUKA-FLUX's adds Grad and CLIP; a list chooses."""
    from asuka.eval import run as run_mod
    from asuka.eval.selection import METRICS, included_metrics
    from asuka.utils.errors import ConfigError

    monkeypatch.setattr(F, "inception_weights_file", lambda *a: None)
    monkeypatch.setattr(run_mod, "lpips_trunk_file", lambda *a: None)
    sd = compose_config("eval", ["method=sd", "paths.clip=null"])
    assert "clip" not in included_metrics(sd) and {"fid", "u_ids", "p_ids", "lpips"} <= set(included_metrics(sd))
    run_mod._check_weight_files(sd)  # no CLIP folder needed
    flux = compose_config("eval", ["method=asuka_flux", "paths.clip=null"])
    assert included_metrics(flux) == METRICS
    with pytest.raises(ConfigError, match="paths.clip"):
        run_mod._check_weight_files(flux)
    asked = compose_config("eval", ["method=sd", "paths.clip=null", "metrics.include=[lpips,clip]"])
    assert included_metrics(asked) == ("lpips", "clip")
    with pytest.raises(ConfigError, match="paths.clip"):
        run_mod._check_weight_files(asked)
    with pytest.raises(ConfigError, match=r"metrics.include.*ids: choose from"):
        included_metrics(compose_config("eval", ["metrics.include=[ids]"]))
