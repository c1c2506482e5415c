"""FID, U-IDS/P-IDS, PSNR/SSIM and LPIPS against independent computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from asuka.eval.metrics import build_lpips, frechet_distance, ids_scores, lpips_metric, psnr, ssim


def _fid_oracle(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance through the eigenvalues of S_a S_b (torch-fidelity's route), all in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_covmean = np.sqrt(scipy.linalg.eigvals(sa @ sb).astype(np.complex128)).real.sum()
    d = a.mean(0) - b.mean(0)
    return float(d @ d + np.trace(sa) + np.trace(sb) - 2 * tr_covmean)


def test_frechet_distance_matches_independent_float64():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 16)).astype(np.float32)
    b = (rng.normal(size=(400, 16)) * 1.3 + 0.2).astype(np.float32)
    assert frechet_distance(a, b) == pytest.approx(_fid_oracle(a, b), rel=1e-6, abs=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(_fid_oracle(a, b), rel=1e-6)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 32))
    assert abs(frechet_distance(a, a)) < 1e-6


@pytest.mark.parametrize("n_real,n_fake", [(8, 8), (12, 7), (64, 40)])
def test_frechet_distance_with_fewer_images_than_dimensions(n_real, n_fake):
    """Singular covariances take the exact low-rank route; it must agree with the eigenvalue oracle."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(n_real, 64)), rng.normal(size=(n_fake, 64)) * 0.7 + 0.5
    assert frechet_distance(a, b) == pytest.approx(_fid_oracle(a, b), rel=1e-6, abs=1e-8)
    assert abs(frechet_distance(a, a)) < 1e-9


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(5), np.zeros(5))


def _ids_oracle(real: np.ndarray, fake: np.ndarray, pca_dim: int | None) -> tuple[float, float]:
    from sklearn.decomposition import PCA
    from sklearn.svm import LinearSVC

    x = np.concatenate([real, fake]).astype(np.float64)
    if pca_dim is not None:
        x = PCA(n_components=pca_dim, random_state=0).fit_transform(x)
    y = np.array([1] * len(real) + [0] * len(fake))
    svm = LinearSVC(dual=False).fit(x, y)
    wrong = np.mean(svm.predict(x) != y)
    d = svm.decision_function(x)
    return float(wrong), float(np.mean(d[len(real):] > d[: len(real)]))


@pytest.mark.parametrize("pca_dim", [None, 8])
def test_ids_scores_match_direct_sklearn(pca_dim):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(120, 24))
    fake = rng.normal(size=(120, 24)) + 0.15
    u, p = ids_scores(real, fake, pca_dim=pca_dim)
    u_ref, p_ref = _ids_oracle(real, fake, pca_dim)
    assert u == pytest.approx(u_ref)
    assert p == pytest.approx(p_ref)


def test_ids_same_distribution_is_about_one_half():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    u, p = ids_scores(real, fake)
    assert abs(u - 0.5) < 0.05
    assert abs(p - 0.5) < 0.05


def test_ids_well_separated_gives_zero():
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 8))
    fake = rng.normal(size=(300, 8)) + 20.0
    u, p = ids_scores(real, fake)
    assert u == 0.0
    assert p == 0.0


def test_ids_needs_pairs():
    with pytest.raises(ValueError, match="paired"):
        ids_scores(np.zeros((10, 4)), np.zeros((9, 4)))
    with pytest.raises(ValueError, match="pca_dim"):
        ids_scores(np.random.rand(5, 4), np.random.rand(5, 4), pca_dim=50)


def test_psnr_and_ssim_follow_the_official_definitions():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = (a + 0.05 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(b, a), (-10 * torch.log10(mse + 1e-7)).float())
    w = torch.tensor([0.2989, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    ga, gb = (a.double() * w).sum(1), (b.double() * w).sum(1)
    ref = [structural_similarity(gb[i].numpy(), ga[i].numpy(), data_range=1.0) for i in range(2)]
    assert np.allclose(ssim(b, a).numpy(), ref, atol=1e-6)
    assert torch.allclose(ssim(a, a), torch.ones(2))


@pytest.fixture(scope="module")
def lpips_random():
    model, info = build_lpips("alex", weights="random", seed=0)
    return model, info


def test_lpips_of_identical_images_is_zero(lpips_random):
    model, info = lpips_random
    assert info["weights"] == "random" and info["trunk_sha256"] == "random"
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(lpips_metric(model, x, x), torch.zeros(2), atol=1e-7)
    assert (lpips_metric(model, x, x.flip(-1)) > 0).all()


def test_lpips_rejects_images_outside_minus_one_one(lpips_random):
    model, _ = lpips_random
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lpips_metric(model, x * 255, x)
    # [0, 1] images pass the range check, so only clearly wrong ranges are caught; the tolerance admits round-off
    lpips_metric(model, (x * 1.0005).clamp(-1.0005, 1.0005), x)


def test_pretrained_lpips_without_a_local_trunk_is_a_clear_error(tmp_path, monkeypatch):
    from asuka.utils.errors import AsukaError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(AsukaError, match="alexnet-owt-7be5be79.pth"):
        build_lpips("alex", weights="pretrained")


def test_pretrained_lpips_reads_a_local_torchvision_trunk(tmp_path):
    import torchvision

    trunk = torchvision.models.alexnet().state_dict()
    torch.save(trunk, tmp_path / "alexnet-owt-7be5be79.pth")
    model, info = build_lpips("alex", weights="pretrained", lpips_dir=str(tmp_path))
    assert info["trunk_file"].endswith("alexnet-owt-7be5be79.pth") and len(info["trunk_sha256"]) == 64
    own = model.net.state_dict()
    assert torch.equal(own["slice2.3.weight"], trunk["features.3.weight"])
    assert torch.equal(own["slice5.10.bias"], trunk["features.10.bias"])
