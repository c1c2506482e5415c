"""scripts/make_masks.py (run for real) and the shipped samples: reproducible files, an honest manifest."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

from asuka.data.mask_files import write_masks
from asuka.data.masks import KINDS
from asuka.data.procedural import make_scene
from asuka.data.seeding import sample_rng
from data_helpers import preset_generator


def _make_masks(repo, cwd, *args):
    return subprocess.run([sys.executable, str(repo / "scripts" / "make_masks.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_make_masks_script(repo, tmp_path):
    runs = {}
    for name in ("a", "b"):
        out = tmp_path / name
        proc = _make_masks(repo, tmp_path, "n=5", "size=64", "seed=3", f"out={out}")
        assert proc.returncode == 0, proc.stderr
        runs[name] = out
    files = sorted(p.name for p in runs["a"].iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png", "manifest.jsonl"]
    for f in files:  # the same seed rewrites identical bytes
        assert (runs["a"] / f).read_bytes() == (runs["b"] / f).read_bytes()
    rows = [json.loads(line) for line in (runs["a"] / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == files[:5]
    for row in rows:
        img = Image.open(runs["a"] / row["file"])
        arr = np.asarray(img)
        assert img.mode == "L" and img.size == (64, 64) and set(np.unique(arr)) <= {0, 255}
        assert row["kind"] in KINDS
        assert row["hole_ratio"] == np.count_nonzero(arr == 255) / arr.size
        assert 0.05 <= row["hole_ratio"] <= 0.75


def test_make_masks_requires_out(repo, tmp_path):
    proc = _make_masks(repo, tmp_path, "n=2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config key 'out'")


def test_any_subset_is_reproducible(tmp_path):
    gen = preset_generator("eval")
    rows = write_masks(gen, 4, 48, 9, tmp_path, progress=False)
    for i, row in enumerate(rows):
        mask, kind = gen(sample_rng(9, 0, i), 48, 48)
        assert kind == row["kind"] and kind not in ("rectangle", "complement_rectangle")
        assert np.array_equal(np.asarray(Image.open(tmp_path / row["file"])) == 255, mask)


def test_shipped_samples_match_their_generator(repo):
    samples = repo / "data" / "samples"
    gen = preset_generator("eval")
    for i in range(8):
        name = f"scene_{i:02d}.png"
        assert np.array_equal(np.asarray(Image.open(samples / name)), np.asarray(make_scene(i, 256)))
        mask, _ = gen(sample_rng(0, 0, i), 256, 256)
        assert np.array_equal(np.asarray(Image.open(samples / "masks" / name)) == 255, mask)
        assert 0.2 <= mask.mean() <= 0.8
