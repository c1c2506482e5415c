"""Image-quality metrics on precomputed features or image tensors.

FID and U-IDS/P-IDS take Inception features (computed once per image set in :mod:`asuka.eval.features`), so both
metrics see exactly the same activations. PSNR/SSIM follow the official ASUKA script (``asuka-flux/eval``): [0, 1]
images, ``-10 log10(mse + 1e-7)``, SSIM on the grayscale image with ``data_range=1``. LPIPS is AlexNet v0.1 on
[-1, 1] inputs; a wrong range is the most common LPIPS bug, so it is checked instead of silently rescaled.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

from asuka.models.lpips import build_lpips, lpips_trunk_file  # noqa: F401  (the evaluation's LPIPS)

# torchvision's rgb_to_grayscale (ITU-R 601-2 luma), which the official SSIM script applies before skimage.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
_PSNR_EPS = 1e-7          # official script: -10 * log10(mse + 1e-7)
_RANGE_TOL = 1e-3         # slack for float round-off when checking LPIPS inputs are in [-1, 1]


def _as_float64_2d(feats: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Features as a float64 [N, D] array (float32 statistics lose FID digits on 2048-d features)."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [N, D] feature array, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 feature vectors, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def frechet_distance(real_feats: np.ndarray | torch.Tensor, fake_feats: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception pool3).

    ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr(sqrtm(S_r S_f))``, all in float64 (float32 statistics lose FID
    digits on 2048-d features).

    With more vectors than dimensions (Places2: 36,500 x 2048) the trace term is ``scipy.linalg.sqrtm`` as in the
    official scripts: a non-finite result is retried with a small diagonal offset (pytorch-fid's remedy) and the
    imaginary part left by round-off is dropped, with a warning when it is not negligible. With at most as many
    vectors as dimensions (MISATO's 2,000, small bins, tests) ``S_r S_f`` is singular, where ``sqrtm`` is slow and
    inaccurate; the trace is then computed exactly from the centred features: the eigenvalues of ``S_r S_f`` are the
    squared singular values of ``X_r X_f^T / sqrt((n_r - 1)(n_f - 1))``, so the trace of its square root is their sum.
    """
    real = _as_float64_2d(real_feats, "real_feats")
    fake = _as_float64_2d(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")
    n_r, n_f, dim = len(real), len(fake), real.shape[1]
    mu_r, mu_f = real.mean(axis=0), fake.mean(axis=0)
    diff = mu_r - mu_f
    if min(n_r, n_f) <= dim:
        xr, xf = real - mu_r, fake - mu_f
        tr_r, tr_f = float((xr ** 2).sum()) / (n_r - 1), float((xf ** 2).sum()) / (n_f - 1)
        singular_values = np.linalg.svd(xr @ xf.T, compute_uv=False)
        tr_covmean = float(singular_values.sum()) / np.sqrt((n_r - 1) * (n_f - 1))
        return float(diff @ diff + tr_r + tr_f - 2.0 * tr_covmean)

    sigma_r = np.atleast_2d(np.cov(real, rowvar=False))
    sigma_f = np.atleast_2d(np.cov(fake, rowvar=False))
    covmean = scipy.linalg.sqrtm(sigma_r @ sigma_f)
    if not np.isfinite(covmean).all():
        offset = np.eye(dim) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma_r + offset) @ (sigma_f + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        scale = max(1.0, np.abs(np.diagonal(covmean).real).max())
        if imag > 1e-3 * scale:
            warnings.warn(f"frechet_distance: dropping a non-negligible imaginary part ({imag:.3g}) of sqrtm; "
                          "the covariances are ill-conditioned", RuntimeWarning, stacklevel=2)
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma_r) + np.trace(sigma_f) - 2.0 * np.trace(covmean))


def ids_scores(real_feats: np.ndarray | torch.Tensor, fake_feats: np.ndarray | torch.Tensor,
               pca_dim: int | None = None) -> tuple[float, float]:
    """U-IDS and P-IDS (co-mod-gan definitions) of paired real/fake features.

    A linear SVM (``LinearSVC(dual=False)``) separates real (label 1) from fake (label 0).
    U-IDS is its misclassification rate on the set it was fit on; P-IDS is the fraction of pairs ``i`` whose fake
    scores higher than its real, ``decision(fake_i) > decision(real_i)``. ``fake_i`` must be the inpainting of
    ``real_i``, so the two sets must have equal counts in the same order. ``pca_dim`` (official ASUKA: the image
    resolution) first projects both sets with one PCA fitted on their union; it must not exceed the number of
    vectors or the feature dimension.
    """
    from sklearn.decomposition import PCA
    from sklearn.svm import LinearSVC

    real = _as_float64_2d(real_feats, "real_feats")
    fake = _as_float64_2d(fake_feats, "fake_feats")
    if real.shape != fake.shape:
        raise ValueError(f"IDS needs paired features of equal shape: real {real.shape}, fake {fake.shape}")
    inputs = np.concatenate([real, fake])
    if pca_dim is not None:
        if not 1 <= pca_dim <= min(inputs.shape):
            raise ValueError(f"pca_dim={pca_dim} must be in [1, {min(inputs.shape)}] "
                             f"({inputs.shape[0]} vectors of dimension {inputs.shape[1]})")
        inputs = PCA(n_components=pca_dim, random_state=0).fit_transform(inputs)
    targets = np.concatenate([np.ones(len(real), dtype=np.int64), np.zeros(len(fake), dtype=np.int64)])
    svm = LinearSVC(dual=False)
    with warnings.catch_warnings():
        # Separable or tiny sets hit the iteration cap; the scores are still what the definition asks for.
        warnings.filterwarnings("ignore", message=".*failed to converge.*")
        svm.fit(inputs, targets)
    u_ids = 1.0 - float(svm.score(inputs, targets))
    real_out = svm.decision_function(inputs[: len(real)])
    fake_out = svm.decision_function(inputs[len(real):])
    p_ids = float(np.mean(fake_out > real_out))
    return u_ids, p_ids


def _check_01(x: torch.Tensor, name: str) -> torch.Tensor:
    """[B, 3, H, W] float image in [0, 1] (PSNR/SSIM work on this range like the official script)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected [B, 3, H, W], got {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [0, 1] images ``[B, 3, H, W]``: ``-10 log10(mse + 1e-7)`` (official script)."""
    pred, target = _check_01(pred, "pred"), _check_01(target, "target")
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return (-10.0 * torch.log10(mse + _PSNR_EPS)).float()


def _gray(x: torch.Tensor) -> np.ndarray:
    w = torch.tensor(_GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1).cpu().numpy()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [0, 1] images: skimage ``structural_similarity`` on grayscale, ``data_range=1``."""
    from skimage.metrics import structural_similarity

    pred_g, target_g = _gray(_check_01(pred, "pred")), _gray(_check_01(target, "target"))
    vals = [structural_similarity(p, t, data_range=1.0) for p, t in zip(pred_g, target_g)]
    return torch.tensor(vals, dtype=torch.float32)


def check_range(x: torch.Tensor, name: str, low: float = -1.0, high: float = 1.0, tol: float = _RANGE_TOL) -> None:
    """Raise ValueError when ``x`` leaves ``[low, high]`` by more than ``tol`` ([0, 1] fed as [-1, 1] is silent)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < low - tol or hi > high + tol:
        raise ValueError(f"{name}: values in [{lo:.4g}, {hi:.4g}] but [{low:g}, {high:g}] is expected")


def lpips_metric(model: torch.nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image LPIPS of [-1, 1] images ``[B, 3, H, W]`` with a built ``lpips.LPIPS`` model (see ``build_lpips``)."""
    check_range(pred, "lpips pred")
    check_range(target, "lpips target")
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(pred.to(device, torch.float32), target.to(device, torch.float32))
    return out.reshape(out.shape[0]).float().cpu()
