"""Subject-benchmark evaluation: the metrics against independent computations, the benchmark file, a full run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose_config  # noqa: E402

from asuka.eval.run import evaluate  # noqa: E402
from asuka.eval.subject import load_subject_items  # noqa: E402
from asuka.eval.subject_metrics import SubjectScorer, background_psnr, generated_region  # noqa: E402
from asuka.utils.errors import ConfigError, DataError  # noqa: E402


def test_background_psnr_counts_only_known_pixels():
    target = torch.rand(1, 3, 8, 8)
    pred = target.clone()
    pred[..., :4, :] = 1 - pred[..., :4, :]  # wrong in the hole
    pred[..., 4:, :] += 0.1                 # and 0.1 off on the known half
    known = torch.zeros(1, 1, 8, 8)
    known[..., 4:, :] = 1
    assert background_psnr(pred, target, known).item() == pytest.approx(-10 * np.log10(0.01 + 1e-7), abs=1e-3)


def test_scorer_identity_and_empty_prompt():
    scorer = SubjectScorer("random", None, None)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (30, 20, 3), dtype=np.uint8) for _ in range(2))
    s = scorer([a, a], [a, b], ["a dog", ""])
    assert s["clip_i"][0] == pytest.approx(1.0, abs=1e-5) and s["dino"][0] == pytest.approx(1.0, abs=1e-5)
    assert s["clip_i"][1] < 1 - 1e-4 and np.isfinite(s["clip_t"][0]) and np.isnan(s["clip_t"][1])
    hole = np.zeros((30, 20), bool)
    hole[5:9, 2:7] = True
    assert generated_region(a, hole).shape == (4, 5, 3)


def test_benchmark_file_errors(tmp_path):
    cfg = OmegaConf.create({"root": str(tmp_path), "format": "jsonl"})
    with pytest.raises(DataError, match="benchmark.jsonl: benchmark file not found"):
        load_subject_items(cfg)
    Image.new("RGB", (8, 8)).save(tmp_path / "s.png")
    line = {"name": "x", "scene": "s.png", "mask": "m.png", "subject": "s.png", "prompt": "a dog"}
    (tmp_path / "benchmark.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=r"benchmark.jsonl:1: missing file\(s\) .*m.png"):
        load_subject_items(cfg)
    Image.new("L", (8, 8)).save(tmp_path / "m.png")
    assert load_subject_items(cfg)[0].prompt == "a dog"


@pytest.mark.parametrize("model", [[], ["model=sdxl_tiny"]])  # SD-1.5, and SDXL (the released LAR-Gen backbone)
def test_largen_eval_writes_subject_metrics_and_keeps_predictions(tmp_path, model):
    cfg = compose_config("eval", ["experiment=demo", "method=largen", "dataset=largen_samples", *model])
    results = evaluate(cfg, tmp_path)
    metrics = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert all(np.isfinite(metrics[k]) for k in ("clip_i", "dino", "clip_t", "bg_psnr", "bg_lpips", "fid"))
    assert results["meta"]["warning"].startswith("RANDOM WEIGHTS")
    preds = sorted((tmp_path / "predictions").glob("*.png"))
    assert len(preds) == len(load_subject_items(cfg.dataset)) == len((tmp_path / "per_image.csv").read_text().splitlines()) - 1
    stamp = preds[0].stat().st_mtime_ns
    evaluate(cfg, tmp_path)  # a rerun scores the predictions already there
    assert preds[0].stat().st_mtime_ns == stamp


def test_unknown_method_on_a_subject_benchmark(tmp_path):
    with pytest.raises(ConfigError, match="method.name"):
        evaluate(compose_config("eval", ["experiment=demo", "method=asuka", "dataset=largen_samples"]), tmp_path)


@pytest.mark.parametrize("method", ["sd_text", "sd_ip_adapter", "paint_by_example"])
def test_baselines_fill_the_hole(tmp_path, method):
    from asuka.eval.subject import _inputs, build_method

    cfg = compose_config("eval", ["experiment=demo", f"method={method}", "dataset=largen_samples"])
    item = load_subject_items(cfg.dataset)[0]
    scene, hole, subject, sub_mask = _inputs(item, 64)
    run = build_method(cfg, torch.device("cpu"), tmp_path)
    out = np.asarray(run(scene, hole, item.prompt, subject, sub_mask, torch.Generator().manual_seed(0)))
    inside = np.asarray(hole) >= 128
    assert out.shape == (64, 64, 3) and np.abs(out[inside].astype(float) - np.asarray(scene)[inside]).mean() > 5
    if method == "sd_ip_adapter":
        assert (tmp_path / "ip-adapter-plus_sd15.bin").is_file()  # the tiny adapter went through load_ip_adapter


@pytest.mark.parametrize("key,value", [("scene", "../outside.png"), ("mask", "/etc/hosts"),
                                       ("name", "/../../escaped"), ("name", "../x")])
def test_benchmark_paths_and_names_stay_inside(tmp_path, key, value):
    """Issue 22 item 5: a line cannot make eval read outside the benchmark root or write outside the run folder."""
    root = tmp_path / "bench"
    root.mkdir()
    Image.new("RGB", (8, 8)).save(root / "s.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    Image.new("L", (8, 8)).save(root / "m.png")
    line = {"name": "x", "scene": "s.png", "mask": "m.png", "subject": "s.png", "prompt": "a dog", key: value}
    (root / "benchmark.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataError, match=rf"benchmark.jsonl:1: {key}: .* must be a path inside"):
        load_subject_items(OmegaConf.create({"root": str(root), "format": "jsonl"}))


@pytest.mark.parametrize("method", ["largen", "paint_by_example"])
def test_subject_method_without_a_subject_dataset_names_the_dataset(tmp_path, method):
    """Issue 23: ``eval.py experiment=demo method=largen`` says the key to fix is the dataset, in one line."""
    with pytest.raises(ConfigError, match=r"^config key 'dataset': method=.* needs a subject benchmark: dataset=largen_samples"):
        evaluate(compose_config("eval", ["experiment=demo", f"method={method}"]), tmp_path)
    assert not any(tmp_path.iterdir())


def test_every_subject_input_is_checked_before_generating(tmp_path, monkeypatch):
    """Issue 22 item 10: a mask of another size than its scene, or a corrupt subject, among the items: one line
    naming the file before any model is built."""
    from asuka.eval import subject as subject_mod

    monkeypatch.setattr(subject_mod, "generate", lambda *a, **k: pytest.fail("generation started"))
    root = tmp_path / "bench"
    root.mkdir()
    for k in range(2):
        Image.new("RGB", (8, 8)).save(root / f"s{k}.png")
    Image.new("L", (8, 8), 255).save(root / "m0.png")
    Image.new("L", (6, 8), 255).save(root / "m1.png")  # the second item's mask: another size
    lines = [{"name": f"x{k}", "scene": f"s{k}.png", "mask": f"m{k}.png", "subject": f"s{k}.png"} for k in range(2)]
    (root / "benchmark.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    cfg = compose_config("eval", ["experiment=demo", "method=largen", "dataset=largen_samples"])
    cfg.dataset.root, cfg.dataset.format = str(root), "jsonl"
    with pytest.raises(DataError, match=r"m1.png: mask is 6x8 but its scene .*s1.png is 8x8"):
        subject_mod.evaluate_subject(cfg, tmp_path / "run")
    Image.new("L", (8, 8), 255).save(root / "m1.png")
    (root / "s1.png").write_bytes((root / "s1.png").read_bytes()[:30])  # a truncated subject (and scene)
    with pytest.raises(DataError, match=r"s1.png: cannot read image"):
        subject_mod.evaluate_subject(cfg, tmp_path / "run")
