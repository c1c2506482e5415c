"""TrainDataset / EvalDataset: samples fixed by (seed, epoch, index), bad files skipped and reported, eval pairs
checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.data.datasets import EvalDataset, ImageItem, TrainDataset, collate, random_resized_crop_box
from asuka.data.seeding import sample_rng
from asuka.utils.errors import DataError
from data_helpers import preset_generator, truncate, write_image, write_mask

RES = 32


@pytest.fixture
def items(tmp_path):
    sizes = [(40, 30), (64, 64), (20, 12), (50, 80)]  # (20, 12) is smaller than RES: up-scaled
    return [ImageItem(write_image(tmp_path / f"{i}.png", size=s, seed=i), None, None, str(i))
            for i, s in enumerate(sizes)]


def _dataset(items, seed=0):
    return TrainDataset(items, RES, preset_generator("mixed"), seed)


def _same(a, b):
    return torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_sample_format(items):
    ds = _dataset(items)
    assert len(ds) == 4
    for i in range(len(ds)):
        s = ds[(0, i)]
        assert s["image"].shape == (3, RES, RES) and s["image"].dtype == torch.float32
        assert -1 <= s["image"].min() and s["image"].max() <= 1
        assert s["mask"].shape == (1, RES, RES) and set(s["mask"].unique().tolist()) <= {0.0, 1.0}
        assert s["index"] == i and s["bad"] == []


def test_determinism_by_seed_epoch_index(items):
    a, b = _dataset(items), _dataset(items)
    order = [(1, 2), (0, 0), (1, 1), (0, 3)]
    first = {k: a[k] for k in order}
    second = {k: b[k] for k in reversed(order)}  # another instance, another order: same samples
    assert all(_same(first[k], second[k]) for k in order)
    assert _same(a[2], a[(0, 2)])  # a plain int is epoch 0
    a.set_epoch(1)
    assert _same(a[2], a[(1, 2)])
    assert not _same(a[(0, 1)], a[(1, 1)])  # another epoch, another crop/mask
    assert not _same(a[(0, 1)], _dataset(items, seed=1)[(0, 1)])


def test_bad_image_is_skipped_and_reported(items):
    truncate(items[1].image)
    ds = _dataset(items)
    s = ds[(0, 1)]
    assert s["bad"] == [str(items[1].image)] and s["index"] == 1
    assert ds.collate is collate  # the engine's collate_fn
    batch = collate([ds[(0, 0)], s, ds[(0, 2)]])
    assert batch["image"].shape == (3, 3, RES, RES) and batch["mask"].shape == (3, 1, RES, RES)
    assert batch["index"].tolist() == [0, 1, 2] and batch["bad"] == [str(items[1].image)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=[(0, 0), (0, 1)], collate_fn=collate)
    assert next(iter(loader))["bad"] == [str(items[1].image)]
    for it in items:
        truncate(it.image)
    with pytest.raises(DataError, match="consecutive"):
        ds[(0, 0)]


def test_sample_rng_is_numpys_stream_for_the_triple():
    """The uint32 fast path gives numpy's stream for the list of ints, small and over 32 bits alike."""
    for triple in ((0, 0, 0), (7, 3, 123_456), (2**32 - 1, 1, 2), (2**40, 0, 5)):
        expected = np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(triple))))
        assert np.array_equal(sample_rng(*triple).integers(0, 2**63, 8), expected.integers(0, 2**63, 8)), triple
    with pytest.raises(ValueError, match="index must be >= 0"):
        sample_rng(0, 0, -1)


def test_random_resized_crop_box_stays_inside():
    rng = sample_rng(0, 0, 0)
    for w, h in ((64, 64), (300, 40), (40, 300), (5, 7)):
        for _ in range(200):
            left, top, cw, ch = random_resized_crop_box(rng, w, h)
            assert 0 <= left and 0 <= top and 0 < cw and 0 < ch and left + cw <= w and top + ch <= h


def test_eval_dataset(tmp_path):
    img = write_image(tmp_path / "im.png", size=(40, 30))
    mask = write_mask(tmp_path / "m.png", size=(40, 30), box=(0, 0, 20, 30))
    ds = EvalDataset([ImageItem(img, mask, "indoor", "im")], resolution=16)
    s = ds[0]
    assert s["image"].shape == (3, 16, 16) and s["mask"].shape == (1, 16, 16)
    assert s["name"] == "im" and s["domain"] == "indoor"
    assert s["mask"][0, :, :8].eq(1).all() and s["mask"][0, :, 8:].eq(0).all()
    full = EvalDataset([ImageItem(img, mask, None, "im")], resolution=None)[0]
    assert full["image"].shape == (3, 30, 40)
    batch = collate([s, s])
    assert batch["name"] == ["im", "im"] and batch["domain"] == ["indoor", "indoor"]


def test_eval_dataset_errors(tmp_path):
    img = write_image(tmp_path / "im.png", size=(40, 30))
    small = write_mask(tmp_path / "small.png", size=(20, 15))
    with pytest.raises(DataError) as err:
        EvalDataset([ImageItem(img, small, None, "im")], 16)[0]
    assert str(img) in str(err.value) and str(small) in str(err.value)
    with pytest.raises(DataError, match="no mask"):
        EvalDataset([ImageItem(img, None, None, "im")], 16)[0]


def test_eval_center_crop_for_places2(tmp_path):
    arr = np.zeros((30, 50, 3), np.uint8)
    arr[:, 10:40] = 255  # the centred 30x30 square is white, the sides black
    img = write_image(tmp_path / "wide.png", array=arr)
    mask = write_mask(tmp_path / "m.png", size=(30, 30))
    s = EvalDataset([ImageItem(img, mask, None, "wide", center_crop=True)], resolution=30)[0]
    assert s["image"].shape == (3, 30, 30) and torch.all(s["image"] == 1)
    big = write_mask(tmp_path / "big.png", size=(60, 60))
    s = EvalDataset([ImageItem(img, big, None, "wide", center_crop=True)], resolution=None)[0]
    assert s["image"].shape == (3, 60, 60)
    assert Image.open(big).size == (60, 60)
