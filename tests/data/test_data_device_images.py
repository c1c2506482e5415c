"""dataset.image_work=gpu: the loader ships file bytes with the CPU path's crop box and flip; decode_batch makes the
image on the device (here the CPU). Same crops, flips and masks as the CPU path; pixels within resampling round-off;
a file whose body does not decode leaves the batch and is reported, as the CPU path skips unreadable images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from asuka.data.datasets import ImageItem, TrainDataset, build_train_dataset
from asuka.data.device_images import decode_batch
from asuka.utils.errors import ConfigError, DataError
from conftest import compose_config
from data_helpers import preset_generator, truncate

RES = 32


def _smooth(size: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth colour image (JPEG keeps it close, so decoder differences stay small)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [np.sin(xx * rng.uniform(2, 8) + yy * rng.uniform(2, 8) + rng.uniform(0, 6)) for _ in range(3)]
    return ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)


@pytest.fixture
def items(tmp_path):
    out = []
    for i, (size, ext) in enumerate([((96, 64), "jpg"), ((40, 30), "png"), ((20, 12), "jpg"), ((50, 80), "jpg")]):
        path = tmp_path / f"{i}.{ext}"
        Image.fromarray(_smooth(size, i)).save(path, quality=95)
        out.append(ImageItem(path, None, None, str(i)))
    return out


def _pair(items, seed=0):
    gen = preset_generator("mixed")
    return TrainDataset(items, RES, gen, seed), TrainDataset(items, RES, gen, seed, image_work="gpu")


def test_same_crop_flip_and_mask_as_the_cpu_path(items):
    cpu, gpu = _pair(items)
    keys = [(e, i) for e in range(3) for i in range(len(items))]
    batch = decode_batch(gpu.collate([gpu[k] for k in keys]))
    ref = cpu.collate([cpu[k] for k in keys])
    assert torch.equal(batch["mask"], ref["mask"]) and torch.equal(batch["index"], ref["index"])
    assert batch["image"].shape == ref["image"].shape == (len(keys), 3, RES, RES)
    diff = (batch["image"] - ref["image"]).abs()
    # PIL fixed-point vs float weights: ties rounded apart now and then, one level (2 / 255 in [-1, 1])
    assert diff.mean() < 0.5 / 255 and diff.max() < 3 / 255
    flipped = (batch["image"].flip(-1) - ref["image"]).abs().mean(dim=(1, 2, 3))
    assert (diff.mean(dim=(1, 2, 3)) < flipped).all()  # the flip matches sample by sample
    assert {c[4] for c in gpu.collate([gpu[k] for k in keys])["crop"]} == {0, 1}  # both flips occur


def test_unreadable_files(items):
    Image.new("RGB", (8, 8)).save(items[0].image)  # still a JPEG
    items[1].image.write_bytes(b"not an image")
    _, gpu = _pair(items)
    sample = gpu[(0, 1)]  # header unreadable: skipped and reported, as on the CPU path
    assert sample["bad"] == [str(items[1].image)]
    truncate(items[3].image)
    # header fine, body cut: the loader ships it; at decode time it leaves the batch with its sample and is reported
    keys = [(0, 0), (0, 3), (0, 2), (1, 1)]  # (1, 1): index 1 is skipped by the loader, index 2 stands in
    samples = [gpu[k] for k in keys]
    batch = decode_batch(gpu.collate(samples))
    assert batch["bad"] == [str(items[1].image), str(items[3].image)]
    assert batch["index"].tolist() == [0, 2, 1] and batch["image"].shape == (3, 3, RES, RES)
    kept = [samples[i] for i in (0, 2, 3)]
    assert torch.equal(batch["mask"], torch.stack([s["mask"] for s in kept]))
    alone = decode_batch(gpu.collate(kept))  # the remaining samples decode as they would without the bad one
    assert torch.equal(batch["image"], alone["image"])
    with pytest.raises(DataError, match=str(items[3].image.name)):  # no file of the batch decodes
        decode_batch(gpu.collate([gpu[(0, 3)]]))


def test_config_key(tmp_path):
    cfg = compose_config("train_mae", ["experiment=demo", "dataset.image_work=gpu"])
    ds = build_train_dataset(cfg)
    assert ds.image_work == "gpu" and "encoded" in ds[0]
    with pytest.raises(ConfigError, match="dataset.image_work"):
        build_train_dataset(compose_config("train_mae", ["experiment=demo", "dataset.image_work=tpu"]))


def test_engine_decodes_on_the_device(tmp_path):
    """The engine makes the image from an image_work=gpu batch (train steps and validation): two demo steps give
    the losses of the CPU path, within the one-level pixel differences."""
    from asuka.training.mae import train

    losses = {}
    for work in ("cpu", "gpu"):
        cfg = compose_config("train_mae", ["experiment=demo", f"dataset.image_work={work}", "trainer.max_steps=2",
                                           "trainer.val_every=1", "trainer.checkpoint_every=100"])
        out = train(cfg, run_dir=str(tmp_path / work))
        assert out["finished"] and out["step"] == 2
        losses[work] = out["loss"]
    assert losses["gpu"] == pytest.approx(losses["cpu"], rel=1e-2)
