"""How the MAE's inputs reach ``img_size`` (``model.mae.preprocess``): the released ASUKA loader's rule, which the
released MAE was used with, or ours. The official rule needs cv2's 8-bit ``INTER_AREA`` resize, emulated in torch
(:func:`cv2_area_resize`) so that it runs on any device where it can be exact."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: How inputs reach ``img_size``: ``official`` = the released ASUKA loader (``datas/misato_dataset.py``), what the
#: released MAE was used with; ``ours`` = antialiased bilinear image, binarised mask, holes never shrink.
PREPROCESS = ("official", "ours")


def _area_weights(n: int, m: int) -> torch.Tensor:
    """``[m, n]`` weights of cv2 ``INTER_AREA`` shrinking an axis of ``n`` pixels to ``m``: each output pixel is the
    mean of the source interval ``[i n/m, (i+1) n/m)``, partial pixels weighted by their overlap."""
    scale = n / m
    start = torch.arange(m, dtype=torch.float64)[:, None] * scale
    src = torch.arange(n, dtype=torch.float64)[None]
    return (torch.minimum(start + scale, src + 1) - torch.maximum(start, src)).clamp(min=0) / scale


def cv2_area_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """``cv2.resize(uint8 image, (size, size), interpolation=INTER_AREA)`` in torch: ``image [B, C, H, W]`` in
    [0, 255] -> ``[B, C, size, size]`` on the 8-bit grid (cv2 resizes uint8 images to uint8).

    Shrinking (both sides >= size) is exact area averaging with cv2's rounding (half up for its 2x2 fast path, half
    to even otherwise), on any device. Growing calls cv2 itself (on the CPU): its 8-bit ``INTER_AREA`` zoom rounds in
    two fixed-point steps that a float emulation misses by one level on some pixels (6,008 of 196,608 at 96x80).
    """
    h, w = image.shape[-2:]
    x = image.double()
    if h >= size and w >= size:
        fy, fx = h / size, w / size
        if fy == int(fy) and fx == int(fx):  # cv2's integer-factor fast path
            total = x.reshape(*x.shape[:-2], size, int(fy), size, int(fx)).sum(dim=(-3, -1))
            if fy == fx == 2:
                out = torch.floor((total + 2) / 4)
            else:
                out = torch.round(total.float() * torch.tensor(1 / (fy * fx), dtype=torch.float32)).double()
        else:
            out = torch.round(_area_weights(h, size).to(x.device) @ x @ _area_weights(w, size).to(x.device).T)
    else:
        import cv2

        u8 = image.detach().round().clamp(0, 255).to("cpu", torch.uint8).reshape(-1, h, w).numpy()
        out = torch.from_numpy(np.stack([cv2.resize(p, (size, size), interpolation=cv2.INTER_AREA) for p in u8]))
        out = out.reshape(*image.shape[:-2], size, size).to(image.device, torch.float64)
    return out.clamp(0, 255).to(image.dtype)


def to_model_size(image: torch.Tensor, mask: torch.Tensor, size: int,
                  preprocess: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``[B, 3, H, W]`` in [-1, 1] and mask ``[B, 1, H, W]`` at ``size`` x ``size``, by the rule ``preprocess``
    names.

    ``ours``: the mask is binarised (> 0.5 is hole); the image is resized bilinearly with antialiasing and the
    mask so that a pixel is a hole when ANY hole pixel falls in its area (area interpolation > 0), so holes never
    shrink and no hole pixel leaks into the "known" input of the MAE.
    ``official``: the released loader (``prepare_data``): the image by cv2 ``INTER_AREA`` on the 8-bit grid
    (:func:`cv2_area_resize`), the mask by nearest neighbour (cv2 ``INTER_NEAREST`` = torch ``nearest``) and
    NOT binarised: soft values stay (a pixel with mask < 0.5 is known, any value > 0 makes its patch a hole token).
    """
    s = size
    if preprocess == "official":
        mask = mask.float()
        if image.shape[-2:] != (s, s):
            pixels = torch.round((image.float() + 1.0) * 127.5)  # [-1, 1] -> the uint8 image cv2 sees
            image = cv2_area_resize(pixels, s) / 127.5 - 1.0
            mask = F.interpolate(mask, size=(s, s), mode="nearest")
        return image, mask
    mask = (mask > 0.5).float()
    if image.shape[-2:] != (s, s):
        image = F.interpolate(image.float(), size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mask = (F.adaptive_avg_pool2d(mask, (s, s)) > 0).float()
    return image, mask
