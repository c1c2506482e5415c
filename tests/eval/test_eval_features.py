"""Inception features: random-weight plumbing, batch-size independence, local weights only, the on-disk cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asuka.eval import features as F
from asuka.utils.errors import AsukaError


def _images(n: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


@pytest.fixture(scope="module", params=F.VARIANTS)
def random_extractor(request):
    return F.build_inception(request.param, weights="random", seed=0)


def test_random_features_are_not_vanishing_and_separate_images(random_extractor):
    x = _images(3)
    feats = random_extractor(x)
    assert feats.shape == (3, F.FEATURE_DIM) and feats.dtype == torch.float32
    assert feats.abs().mean() > 1e-3            # default init gives ~1e-8 and FID exactly 0
    assert (feats[0] - feats[1]).abs().mean() > 1e-4
    assert random_extractor.describe()["weights_sha256"] == "random"


def test_features_do_not_depend_on_the_batch(random_extractor):
    x = _images(3, seed=1)
    whole = random_extractor(x)
    split = torch.cat([random_extractor(x[:1]), random_extractor(x[1:])])
    assert torch.allclose(whole, split, rtol=1e-4, atol=1e-5)
    random_extractor.train()  # cannot be switched into training mode (batch statistics)
    assert not random_extractor.training and not random_extractor.net.training


def test_random_weights_are_seeded():
    a = F.build_inception("tf_inception", weights="random", seed=3).state_dict()
    b = F.build_inception("tf_inception", weights="random", seed=3).state_dict()
    c = F.build_inception("tf_inception", weights="random", seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_extractor_wants_uint8(random_extractor):
    with pytest.raises(ValueError, match="uint8"):
        random_extractor(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("variant,filename", [("tf_inception", "weights-inception-2015-12-05-6726825d.pth"),
                                              ("asuka_official", "inception_v3_google-0cc3c7bd.pth")])
def test_missing_weights_say_which_file_goes_where(tmp_path, monkeypatch, variant, filename):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(AsukaError, match=filename) as err:
        F.build_inception(variant, weights="pretrained")
    assert str(tmp_path / "th" / "hub" / "checkpoints") in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(AsukaError, match="paths.inception"):
        F.build_inception(variant, weights="pretrained", weights_path=tmp_path / "nope.pth")


def test_local_weights_are_loaded_and_hashed(tmp_path, monkeypatch):
    rnd = F.build_inception("tf_inception", weights="random", seed=5)
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(rnd.net.state_dict(), path)
    loaded = F.build_inception("tf_inception", weights="pretrained", weights_path=path)
    expected, got = rnd.state_dict(), loaded.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert loaded.describe()["weights_sha256"] == F.file_sha256(path)
    # the standard cache folder is used when paths.inception is null; a folder works too
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    (tmp_path / "th" / "hub" / "checkpoints").mkdir(parents=True)
    path.rename(tmp_path / "th" / "hub" / "checkpoints" / path.name)
    assert F.build_inception("tf_inception").weights_file.startswith(str(tmp_path / "th"))
    # the other variant's file is a clear error, not a crash
    with pytest.raises(AsukaError, match="asuka_official"):
        F.build_inception("asuka_official", weights_path=tmp_path / "th" / "hub" / "checkpoints" / path.name)


class _Counting(torch.nn.Module):
    """Stands in for the extractor: cheap, deterministic, counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def describe(self) -> dict:
        return {"variant": "tf_inception", "weights": "random", "weights_file": None, "weights_sha256": "random",
                "resize_mode": "test", "random_seed": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.float().mean(dim=(2, 3)).repeat(1, F.FEATURE_DIM // 3 + 1)[:, : F.FEATURE_DIM]


def test_feature_set_is_cached_on_disk(tmp_path):
    ext = _Counting()
    x = _images(5, seed=6)
    h = F.hash_arrays(x)
    first = F.FeatureSet(ext, h, 64, 5, tmp_path)
    assert not first.hit
    first.add(x[:2])
    first.add(x[2:])
    feats = first.result()
    assert ext.calls == 2 and feats.shape == (5, F.FEATURE_DIM)
    assert (tmp_path / f"{first.key}.npy").is_file() and (tmp_path / f"{first.key}.json").is_file()

    second = F.FeatureSet(ext, h, 64, 5, tmp_path)
    assert second.hit
    second.add(x)
    assert np.array_equal(second.result(), feats) and ext.calls == 2
    # any change of content, resolution or count is a different entry
    assert not F.FeatureSet(ext, F.hash_arrays(x[:4]), 64, 4, tmp_path).hit
    assert not F.FeatureSet(ext, h, 128, 5, tmp_path).hit
    assert F.FeatureSet(ext, h, 64, 5, None).hit is False


def test_content_hashes_see_order_and_bytes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert F.hash_files([[a], [b]]) != F.hash_files([[b], [a]])
    assert F.hash_files([[a], [b]]) != F.hash_files([[a, b]])
    assert F.hash_files([[a]], {"x": 1}) != F.hash_files([[a]], {"x": 2})
    x = _images(2)
    y = x.clone()
    y[0, 0, 0, 0] ^= 1
    assert F.hash_arrays(x) != F.hash_arrays(y)
