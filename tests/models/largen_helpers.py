"""Tiny LAR-Gen parts shared by the model, training and pipeline tests."""
from __future__ import annotations

import torch

from asuka.models.largen.assign import AssignAdapter
from asuka.models.sd import build_tiny_sd

CLIP_WIDTH = 32  # the tiny CLIP image encoder's width (configs/model/tiny.yaml)
RESAMPLER = dict(image_embed_dim=CLIP_WIDTH, resampler_dim=32, depth=4, dim_head=64, heads=1, num_tokens=4)  # diffusers assumes depth 4, 64-d heads


def tiny_unet():
    return build_tiny_sd(0).unet


def tiny_adapter(unet, seed: int = 1) -> AssignAdapter:
    """An adapter with random (not copied) ip projections, so the image branch visibly matters."""
    torch.manual_seed(seed)
    adapter = AssignAdapter.from_unet(unet, **RESAMPLER)
    for linear in [*adapter.to_k_ip, *adapter.to_v_ip]:
        torch.nn.init.normal_(linear.weight, std=0.2)
    return adapter


def h94_state_dict(depth: int = 4, dim: int = 32, embed: int = CLIP_WIDTH, out: int = 32, inner: int = 64,
                   queries: int = 4, ff: int = 128, layers: tuple[int, ...] = (1, 3, 5, 7), hidden=(32, 32, 32, 64)):
    """An ``ip-adapter-plus`` state dict written with IP-Adapter's own key names (Resampler + ip_adapter) and tiny
    shapes, independently of our converter."""
    g = torch.Generator().manual_seed(7)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    proj = {"latents": r(1, queries, dim), "proj_in.weight": r(dim, embed), "proj_in.bias": r(dim),
            "proj_out.weight": r(out, dim), "proj_out.bias": r(out), "norm_out.weight": 1 + r(out),
            "norm_out.bias": r(out)}
    for i in range(depth):
        proj |= {f"layers.{i}.0.norm1.weight": 1 + r(dim), f"layers.{i}.0.norm1.bias": r(dim),
                 f"layers.{i}.0.norm2.weight": 1 + r(dim), f"layers.{i}.0.norm2.bias": r(dim),
                 f"layers.{i}.0.to_q.weight": r(inner, dim), f"layers.{i}.0.to_kv.weight": r(2 * inner, dim),
                 f"layers.{i}.0.to_out.weight": r(dim, inner), f"layers.{i}.1.0.weight": 1 + r(dim),
                 f"layers.{i}.1.0.bias": r(dim), f"layers.{i}.1.1.weight": r(ff, dim), f"layers.{i}.1.3.weight": r(dim, ff)}
    ip = {}
    for index, h in zip(layers, hidden):
        ip |= {f"{index}.to_k_ip.weight": r(h, out), f"{index}.to_v_ip.weight": r(h, out)}
    return {"image_proj": proj, "ip_adapter": ip}


def halved_clip_input(x01: torch.Tensor) -> torch.Tensor:
    """The released CLIP input (torchvision ``Resize``, antialiased bilinear, then CLIP ``Normalize``) of images in
    [0, 1] at a 2x reduction, written as the separable [1, 3, 3, 1] / 8 filter; exact away from the border."""
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    k = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    down = torch.nn.functional.conv2d(x01, (k[:, None] * k[None, :]).expand(3, 1, 4, 4), stride=2, padding=1,
                                      groups=3)
    return (down - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
