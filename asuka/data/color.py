"""Colour consistency at the hole boundary, as a number (CIE76 Delta E in CIE Lab).

The inpainting-specialised decoder exists to remove the colour shift between the generated hole and the known pixels
around it. ``boundary_color_error`` measures exactly that: the mean Lab distance to the reference in a thin band on
both sides of the hole boundary. Training validation and the evaluation both use it, so it lives on floor 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# sRGB (IEC 61966-2-1) primaries, D65 white: linear RGB -> XYZ.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
_EPS = 216.0 / 24389.0  # (6/29)^3
_KAPPA = 24389.0 / 27.0


def _check(image: torch.Tensor, name: str) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W], got {tuple(image.shape)}")


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB in [-1, 1] (package convention) -> CIE Lab (D65, 2 degree observer), computed in float32.

    Values outside [-1, 1] are clamped first: the metric compares displayable colours.
    """
    _check(image, "image")
    rgb = ((image.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=linear.dtype, device=linear.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    white = torch.tensor(_D65_WHITE, dtype=linear.dtype, device=linear.device).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > _EPS, t.clamp_min(1e-12) ** (1.0 / 3.0), (_KAPPA * t + 16.0) / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def delta_e76(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel CIE76 colour difference ``||Lab(pred) - Lab(target)||``, shape ``[B, 1, H, W]``."""
    return (rgb_to_lab(pred) - rgb_to_lab(target)).norm(dim=1, keepdim=True)


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation with a (2r+1)^2 square (max-pool); pixels beyond the border count as absent."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * radius + 1, stride=1, padding=radius)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion with a (2r+1)^2 square; the image border does not erode the mask."""
    if radius <= 0:
        return mask
    return 1.0 - dilate(1.0 - mask, radius)


def boundary_band(mask: torch.Tensor, band: int = 4) -> torch.Tensor:
    """Pixels within ``band`` pixels of the hole boundary on either side: ``dilate(mask) xor erode(mask)``."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W], got {tuple(mask.shape)}")
    hole = (mask.float() > 0.5).float()
    return dilate(hole, band) - erode(hole, band)  # erode <= hole <= dilate, so the difference is the xor


def boundary_color_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, band: int = 4
) -> torch.Tensor:
    """Mean CIE76 Delta E between ``pred`` and ``target`` in the boundary band of each image, shape ``[B]``.

    Images in [-1, 1], mask ``[B, 1, H, W]`` with 1 = hole. An image whose mask has no boundary (no hole, or all hole)
    has an empty band and gets NaN, so that averages over a set can skip it (``torch.nanmean``).
    """
    _check(pred, "pred")
    _check(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    region = boundary_band(mask.to(pred.device), band)
    err = delta_e76(pred, target)
    count = region.sum(dim=(1, 2, 3))
    total = (err * region).sum(dim=(1, 2, 3))
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("nan")))


def ring_error_map(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, band: int = 4) -> torch.Tensor:
    """Per-pixel Delta E in the known ring of width ``band`` around the hole (zero elsewhere), ``[B, 1, H, W]``.

    This is where a colour shift of the decoder is visible against pixels the user supplied.
    """
    hole = (mask.to(pred.device).float() > 0.5).float()
    ring = dilate(hole, band) - hole
    return delta_e76(pred, target) * ring


def error_map_to_image(error: torch.Tensor, max_delta_e: float = 20.0) -> torch.Tensor:
    """A ``[B, 1, H, W]`` Delta E map as a grey ``[B, 3, H, W]`` image in [-1, 1] for validation grids (white = max)."""
    return (error / max_delta_e).clamp(0.0, 1.0).mul(2.0).sub(1.0).expand(-1, 3, -1, -1)
