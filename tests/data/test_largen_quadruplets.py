"""The quadruplet manifest contract (asuka.data.quadruplets) and the shipped samples in data/largen_samples."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from conftest import compose_config

from asuka.data.largen_engine.run import mine
from asuka.data.largen_engine.samples import make_object_scene
from asuka.data.quadruplets import Quadruplet, load_manifest
from asuka.utils.errors import AsukaError, DataError


def _arr(path):
    return np.asarray(Image.open(path))


def test_shipped_samples_are_a_valid_manifest(repo):
    quads = load_manifest(repo / "data" / "largen_samples")
    assert len(quads) >= 6 and len({q.id for q in quads}) == len(quads)
    for q in quads:
        scene, mask = Image.open(q.scene), _arr(q.mask)
        assert scene.mode == "RGB" and Image.open(q.mask).mode == "L" and mask.shape == scene.size[::-1]
        x0, y0, x1, y1 = q.box
        ys, xs = np.nonzero(mask == 255)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)  # the mask's tight box
        subject, subject_mask = _arr(q.subject), _arr(q.subject_mask)
        assert subject.shape[:2] == subject_mask.shape == (y1 - y0, x1 - x0)
        assert np.array_equal(subject_mask, mask[y0:y1, x0:x1])
        inside = subject_mask == 255
        assert (subject[~inside] == 255).all()  # white outside the subject
        assert np.array_equal(subject[inside], np.asarray(scene)[y0:y1, x0:x1][inside])
        assert q.tag in q.caption and q.source.startswith("scene_")
        assert set(q.scores) == {"tag", "box", "mask"}


def test_shipped_scenes_are_the_procedural_ones(repo):
    scenes = sorted((repo / "data" / "largen_scenes").glob("*.png"))
    assert [p.name for p in scenes] == [f"scene_{i:02d}.png" for i in range(4)]
    for i, path in enumerate(scenes):  # procedural float maths: allow a rounding step across CPUs
        assert np.abs(_arr(path).astype(int) - np.asarray(make_object_scene(0, i))).max() <= 2


def test_the_engine_demo_regenerates_the_shipped_samples(repo, tmp_path):
    """``make_largen_data.py experiment=demo`` (the shipped scenes, the stand-in stages) is how data/largen_samples
    was made: the same images byte for byte, the same records (scores to float noise)."""
    mine(compose_config("make_largen_data", ["experiment=demo", f"out={tmp_path / 'again'}"]))
    shipped = sorted(p.relative_to(repo / "data" / "largen_samples")
                     for p in (repo / "data" / "largen_samples").rglob("*") if p.is_file())
    again = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert again == shipped
    for rel in shipped:
        a, b = tmp_path / "again" / rel, repo / "data" / "largen_samples" / rel
        if rel.suffix == ".png":
            assert a.read_bytes() == b.read_bytes(), rel
        else:
            assert _rounded(_json_lines(a)) == _rounded(_json_lines(b)), rel


def _json_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.suffix == ".jsonl" \
        else json.loads(path.read_text())


def _rounded(value):
    """JSON with its floats rounded to 6 decimals (scores pass through float reductions)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, list) else value


def test_record_round_trip(tmp_path):
    q = Quadruplet("0000007_01", tmp_path / "s/a.png", tmp_path / "s/m.png", tmp_path / "s/b.png",
                   tmp_path / "s/c.png", "a red ball", "ball", (1, 2, 30, 40), {"box": 0.5}, "x/y.jpg")
    record = json.loads(json.dumps(q.to_record(tmp_path)))
    assert record["scene"] == "s/a.png" and record["box"] == [1, 2, 30, 40]
    assert Quadruplet.from_record(record, tmp_path) == q


def test_refuses_missing_unfinished_and_broken_manifests(repo, tmp_path):
    with pytest.raises(AsukaError, match="no quadruplet manifest here"):
        load_manifest(tmp_path / "nothing")
    copy = tmp_path / "copy"
    shutil.copytree(repo / "data" / "largen_samples", copy)
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(AsukaError, match=f"{copy}: the quadruplet manifest is unfinished"):
        load_manifest(copy)
    (copy / "index.json").write_text(json.dumps(index))
    shutil.rmtree(copy / "shard_00001")
    with pytest.raises(AsukaError, match="shard_00001/quadruplets.jsonl: missing shard"):
        load_manifest(copy)


@pytest.mark.parametrize("key,value", [("scene", "../x.png"), ("subject", "/etc/hosts"), ("id", "/../../x")])
def test_record_paths_and_ids_stay_inside_the_root(tmp_path, key, value):
    """Issue 22 item 5: a manifest entry cannot point a reader, or a writer keyed by its id, outside the root."""
    q = Quadruplet("0000007_01", tmp_path / "s/a.png", tmp_path / "s/m.png", tmp_path / "s/b.png",
                   tmp_path / "s/c.png", "a dog", "dog", (1, 2, 3, 4), {"clip": 0.5}, "x")
    record = {**json.loads(json.dumps(q.to_record(tmp_path))), key: value}
    with pytest.raises(DataError, match=rf"quadruplet .*: {key}: .* must be a path inside"):
        Quadruplet.from_record(record, tmp_path)
