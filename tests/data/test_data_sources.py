"""asuka.data.datasets.build_image_source: every layout, and one-line errors for every layout mistake."""
from __future__ import annotations

import pytest

from asuka.data.datasets import build_image_source
from asuka.utils.errors import ConfigError, DataError
from data_helpers import write_image, write_mask


def _folder(root, mask_root=None, name="folder"):
    return {"name": name, "root": str(root), "mask_root": str(mask_root) if mask_root else None}


def test_folder_without_masks(tmp_path):
    write_image(tmp_path / "img" / "b.png")
    write_image(tmp_path / "img" / "sub" / "a.jpg")
    items = build_image_source(_folder(tmp_path / "img"), "train")
    assert [i.name for i in items] == ["b", "sub/a"]
    assert all(i.mask is None and i.domain is None for i in items)


def test_folder_with_masks_pairs_by_stem(tmp_path):
    for stem in ("x", "y"):
        write_image(tmp_path / "img" / f"{stem}.jpg")
        write_mask(tmp_path / "masks" / f"{stem}.png")
    items = build_image_source(_folder(tmp_path / "img", tmp_path / "masks"), "eval")
    assert [(i.image.name, i.mask.name) for i in items] == [("x.jpg", "x.png"), ("y.jpg", "y.png")]


def test_folder_missing_mask_and_count_mismatch(tmp_path):
    for stem in ("x", "y"):
        write_image(tmp_path / "img" / f"{stem}.png")
    write_mask(tmp_path / "masks" / "x.png")
    with pytest.raises(DataError) as err:
        build_image_source(_folder(tmp_path / "img", tmp_path / "masks"), "eval")
    assert "y.png" in str(err.value) and "\n" not in str(err.value)
    write_mask(tmp_path / "masks" / "y.png")
    write_mask(tmp_path / "masks" / "z.png")
    with pytest.raises(DataError, match=r"3 masks for 2 images.*z\.png"):
        build_image_source(_folder(tmp_path / "img", tmp_path / "masks"), "eval")


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DataError) as err:
        build_image_source(_folder(tmp_path / "absent"), "train")
    assert str(tmp_path / "absent") in str(err.value) and "README" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        build_image_source(_folder(tmp_path / "empty"), "train")
    with pytest.raises(ConfigError, match="dataset.name"):
        build_image_source({"name": "imagenet", "root": str(tmp_path)}, "train")
    with pytest.raises(ConfigError, match="dataset.root"):
        build_image_source({"name": "folder", "root": None}, "train")


def test_shipped_samples(repo):
    cfg = _folder(repo / "data" / "samples", repo / "data" / "samples" / "masks", name="samples")
    items = build_image_source(cfg, "eval")
    assert len(items) == 8
    assert all(i.mask.parent.name == "masks" and i.mask.name == i.image.name for i in items)


def test_places2_train_and_eval(tmp_path):
    root = tmp_path / "places2"
    write_image(root / "train" / "a" / "airfield" / "00000001.jpg")
    write_image(root / "train" / "b" / "bakery" / "00000002.jpg")
    for i in (1, 2, 3):
        write_image(root / "val_large" / f"Places365_val_{i:08d}.jpg", size=(48, 32))
        write_mask(root.parent / "val_masks" / f"{i - 1:05d}.png", size=(32, 32))
    cfg = {"name": "places2", "root": str(root), "train_split": "train", "eval_split": "val_large",
           "masks": str(root.parent / "val_masks")}
    train = build_image_source(cfg, "train")
    assert [i.name for i in train] == ["a/airfield/00000001", "b/bakery/00000002"]
    evals = build_image_source(cfg, "eval")
    assert [(i.image.stem[-1], i.mask.name) for i in evals] == [("1", "00000.png"), ("2", "00001.png"),
                                                                  ("3", "00002.png")]
    assert all(i.center_crop for i in evals)
    write_mask(root.parent / "val_masks" / "00003.png")
    with pytest.raises(DataError, match="4 numbered masks for 3 images"):
        build_image_source(cfg, "eval")
    with pytest.raises(DataError, match="make_masks.py mask=eval"):
        build_image_source({**cfg, "masks": str(tmp_path / "nomasks")}, "eval")
    with pytest.raises(DataError, match="train_split"):
        build_image_source({**cfg, "train_split": "data_256"}, "train")


def test_misato_layout_domains_and_prefix(tmp_path):
    root = tmp_path / "misato"
    for idx in (0, 499, 500, 1000, 1500):
        write_image(root / "image" / f"{idx:04d}.png", size=(8, 8))
        write_mask(root / "mask" / f"00{idx:04d}.png", size=(8, 8), box=(1, 1, 4, 4))
    cfg = {"name": "misato", "root": str(root), "mask_prefix": "00"}
    items = build_image_source(cfg, "eval")
    assert [i.name for i in items] == ["0000", "0499", "0500", "1000", "1500"]
    assert [i.domain for i in items] == ["landscape", "landscape", "indoor", "building", "background"]
    assert [i.mask.name for i in items] == ["000000.png", "000499.png", "000500.png", "001000.png", "001500.png"]
    with pytest.raises(DataError, match=r"mask_prefix"):  # the 512 naming on a 1K copy
        build_image_source({**cfg, "mask_prefix": ""}, "eval")
    with pytest.raises(DataError, match=r"expected image/0000.png\.\.\. and mask/0000.png"):
        build_image_source({"name": "misato", "root": str(tmp_path / "nothing"), "mask_prefix": ""}, "eval")
