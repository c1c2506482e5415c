"""The mask bank: written by make_masks format=bank (the same masks as the PNG files), read memory-mapped, drawn with
seeded crops/flips/rolls so that a training sample depends only on (seed, epoch, index)."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.data.datasets import ImageItem, TrainDataset, build_train_dataset
from asuka.data.mask_bank import MaskBank, write_mask_bank
from asuka.data.mask_files import make_masks, write_masks
from asuka.data.masks import GENERATOR_VERSION, KINDS, build_mask_generator
from asuka.data.seeding import sample_rng
from asuka.utils.errors import ConfigError, DataError
from conftest import compose_config
from data_helpers import preset_config, preset_generator, write_image

N, SIZE, SEED = 12, 40, 3  # 40 is not a multiple of 8: the last packed byte is padded


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bank")
    write_mask_bank(preset_generator("mixed"), N, SIZE, SEED, out, progress=False)
    return out


def test_bank_holds_the_generator_masks_bit_packed(bank_dir, tmp_path):
    bank = MaskBank(bank_dir)
    rows = write_masks(preset_generator("mixed"), N, SIZE, SEED, tmp_path, progress=False)
    for i, row in enumerate(rows):
        png = np.asarray(Image.open(tmp_path / row["file"])) == 255
        assert np.array_equal(bank.mask(i), png)  # the bank and format=png hold the same masks
        assert KINDS[bank.kinds[i]] == row["kind"] and row["generator_version"] == GENERATOR_VERSION
        assert np.array_equal(bank.mask(i, flip_h=True), png[:, ::-1])  # flipped in the packed bits, padding too
    index = json.loads((bank_dir / "index.json").read_text())
    assert index["count"] == N and index["size"] == SIZE and index["generator_version"] == GENERATOR_VERSION
    assert sum(index["kinds"].values()) == N
    packed = N * SIZE * 5  # 40 columns -> 5 bytes per row
    assert packed <= (bank_dir / "masks.npy").stat().st_size <= packed + 256  # plus the .npy header


def test_draws_are_seeded_and_keep_the_hole_count(bank_dir):
    bank = MaskBank(bank_dir)
    draws = [bank(sample_rng(0, 1, i), SIZE, SIZE) for i in range(40)]
    again = [bank(sample_rng(0, 1, i), SIZE, SIZE) for i in range(40)]
    assert all(np.array_equal(a, b) and ka == kb for (a, ka), (b, kb) in zip(draws, again))
    sources = {int(np.count_nonzero(bank.mask(i))): i for i in range(N)}
    for mask, kind in draws:  # flips, transposes and rolls move holes, never add or remove them
        assert mask.shape == (SIZE, SIZE) and mask.dtype == bool and kind in KINDS
        assert int(np.count_nonzero(mask)) in sources
    # transformed: most draws differ from every stored mask as written
    stored = [bank.mask(i) for i in range(N)]
    assert sum(any(np.array_equal(m, s) for s in stored) for m, _ in draws) < len(draws) // 2
    crop, _ = bank(sample_rng(0, 0, 0), 24, 24)  # smaller resolution: a random crop
    assert crop.shape == (24, 24)


def test_bank_survives_pickling_into_workers(bank_dir):
    bank = MaskBank(bank_dir)
    bank.mask(0)  # memory-mapped now; the map is not pickled
    clone = pickle.loads(pickle.dumps(bank))
    assert clone._bits is None
    a, ka = bank(sample_rng(5, 2, 7), SIZE, SIZE)
    b, kb = clone(sample_rng(5, 2, 7), SIZE, SIZE)
    assert np.array_equal(a, b) and ka == kb


def test_dataset_with_a_bank_is_deterministic(bank_dir, tmp_path):
    items = [ImageItem(write_image(tmp_path / f"{i}.png", size=(48, 40), seed=i), None, None, str(i))
             for i in range(3)]
    bank = build_mask_generator({**_mask_cfg(), "source": "bank", "bank": str(bank_dir)})
    assert isinstance(bank, MaskBank)
    a = TrainDataset(items, SIZE, bank, seed=1)
    b = pickle.loads(pickle.dumps(TrainDataset(items, SIZE, MaskBank(bank_dir), seed=1)))
    for key in [(0, 2), (1, 0), (0, 1)]:
        assert torch.equal(a[key]["mask"], b[key]["mask"]) and torch.equal(a[key]["image"], b[key]["image"])
    assert not all(torch.equal(a[(0, i)]["mask"], a[(1, i)]["mask"]) for i in range(3))


def test_bank_config_errors(bank_dir, tmp_path):
    with pytest.raises(ConfigError, match="mask.bank"):
        build_mask_generator({**_mask_cfg(), "source": "bank"})
    with pytest.raises(ConfigError, match="mask.source"):
        build_mask_generator({**_mask_cfg(), "source": "disk"})
    with pytest.raises(DataError, match="not a finished mask bank"):
        MaskBank(tmp_path)
    with pytest.raises(DataError, match="smaller than resolution=64"):
        MaskBank(bank_dir).check_resolution(64)
    cfg = compose_config("train_mae", ["experiment=demo", "mask.source=bank", f"mask.bank={bank_dir}",
                                       "resolution=64"])
    with pytest.raises(DataError, match="resolution=64"):  # refused when the dataset is built, before any model
        build_train_dataset(cfg)


def test_make_masks_writes_a_bank(tmp_path):
    out = tmp_path / "bank"
    cfg = compose_config("make_masks", ["format=bank", "n=4", "size=16", "seed=2", f"out={out}",
                                        "paths.coco_instances=null", "paths.object_masks=null"])
    make_masks(cfg)
    bank = MaskBank(out)
    assert len(bank) == 4 and bank.index["settings"]["mask"]["hole_range"] == [0.05, 0.75]
    mask, _ = preset_generator("mixed")(sample_rng(2, 0, 3), 16, 16)
    assert np.array_equal(bank.mask(3), mask)
    with pytest.raises(ConfigError, match="format"):
        make_masks(compose_config("make_masks", ["format=zip", f"out={out}"]))


def _mask_cfg():
    from omegaconf import OmegaConf

    mask_cfg, paths_cfg = preset_config("mixed")
    root = OmegaConf.create({"paths": OmegaConf.to_container(paths_cfg, resolve=True),
                             "mask": OmegaConf.to_container(mask_cfg, resolve=False)})
    return OmegaConf.to_container(root.mask, resolve=True)


def test_roll_is_numpys_roll():
    from asuka.data.mask_bank import _roll

    rng = np.random.default_rng(0)
    for _ in range(50):
        side = int(rng.integers(1, 20))
        mask = rng.random((side, side)) < 0.5
        mask = mask.T[::-1] if rng.random() < 0.5 else mask  # views, as the draws pass them
        dy, dx = (int(v) for v in rng.integers(0, side, 2))
        assert np.array_equal(_roll(mask, dy, dx), np.roll(mask, (dy, dx), axis=(0, 1)))


def test_a_pickled_kinds_array_is_refused_not_unpickled(bank_dir, tmp_path):
    import shutil

    copy = tmp_path / "bank"
    shutil.copytree(bank_dir, copy)
    np.save(copy / "kinds.npy", np.array([object()] * N, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"kinds.npy: not a mask bank's kinds array .*allow_pickle=False"):
        MaskBank(copy)
