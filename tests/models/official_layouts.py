"""State dicts in the official ASUKA (FLUX.1-Fill) layouts, with random values, and the official decoder's forward
written out from those key names (``asuka-flux/ldm/modules/diffusionmodules/asuka_decoder.py`` ``Decoder``, BFL's AE
``Encoder``): the references the converter tests compare our converted modules with."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DECODER_WIDTHS = (128, 256, 512, 512)  # ch 128, ch_mult [1, 2, 4, 4]: the condition encoder's widths are fixed to these
CONDITION_LAYERS = ((128, 4, 3), (256, 128, 3), (512, 256, 4), (512, 512, 4), (512, 512, 4))  # (out, in, kernel)
UP_LAYERS = ((512, 512), (1024, 512), (512, 256), (256, 128))  # ConvTranspose2d(in, out): built, never called


def _resnet_shapes(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    t = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,), f"{prefix}.conv1.weight": (cout, cin, 3, 3),
         f"{prefix}.conv1.bias": (cout,), f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
         f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        t |= {f"{prefix}.nin_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.nin_shortcut.bias": (cout,)}
    return t


def _mid_shapes(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    t = _resnet_shapes(f"{prefix}.mid.block_1", c, c) | _resnet_shapes(f"{prefix}.mid.block_2", c, c)
    t |= {f"{prefix}.mid.attn_1.norm.weight": (c,), f"{prefix}.mid.attn_1.norm.bias": (c,)}
    for name in ("q", "k", "v", "proj_out"):
        t |= {f"{prefix}.mid.attn_1.{name}.weight": (c, c, 1, 1), f"{prefix}.mid.attn_1.{name}.bias": (c,)}
    return t


def decoder_shapes(z: int, widths=DECODER_WIDTHS, res_blocks: int = 2, mask_channel: bool = True) -> dict:
    """``decoder.*`` keys of the official ``Decoder`` (concat_mask, gate_conv false, attn_resolutions [])."""
    top = widths[-1]
    t = {"decoder.conv_in.weight": (top, z, 3, 3), "decoder.conv_in.bias": (top,)} | _mid_shapes("decoder", top)
    block_in = top
    for i in reversed(range(len(widths))):
        for j in range(res_blocks + 1):
            t |= _resnet_shapes(f"decoder.up.{i}.block.{j}", block_in, widths[i])
            block_in = widths[i]
        if i != 0:
            t |= {f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3),
                  f"decoder.up.{i}.upsample.conv.bias": (block_in,)}
    t |= {"decoder.norm_out.weight": (widths[0],), "decoder.norm_out.bias": (widths[0],),
          "decoder.conv_out.weight": (3, widths[0], 3, 3), "decoder.conv_out.bias": (3,)}
    for n, (cout, cin, k) in enumerate(CONDITION_LAYERS):
        cin = cin if n or mask_channel else 3
        t |= {f"decoder.encoder.layers.{n}.weight": (cout, cin, k, k), f"decoder.encoder.layers.{n}.bias": (cout,)}
    for n, (cin, cout) in enumerate(UP_LAYERS):
        t |= {f"decoder.up_layers.{n}.deconv.weight": (cin, cout, 4, 4), f"decoder.up_layers.{n}.deconv.bias": (cout,)}
    return t


def encoder_shapes(z: int, widths: tuple[int, ...], res_blocks: int) -> dict:
    """``encoder.*`` keys of the LDM / BFL AE ``Encoder`` (double_z)."""
    t = {"encoder.conv_in.weight": (widths[0], 3, 3, 3), "encoder.conv_in.bias": (widths[0],)}
    block_in = widths[0]
    for i, width in enumerate(widths):
        for j in range(res_blocks):
            t |= _resnet_shapes(f"encoder.down.{i}.block.{j}", block_in, width)
            block_in = width
        if i != len(widths) - 1:
            t |= {f"encoder.down.{i}.downsample.conv.weight": (width, width, 3, 3),
                  f"encoder.down.{i}.downsample.conv.bias": (width,)}
    t |= _mid_shapes("encoder", block_in)
    return t | {"encoder.norm_out.weight": (block_in,), "encoder.norm_out.bias": (block_in,),
                "encoder.conv_out.weight": (2 * z, block_in, 3, 3), "encoder.conv_out.bias": (2 * z,)}


def random_state(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values at sane scales: weights ~ N(0, 1/fan_in), norm scales ~ U(0.5, 1.5), biases ~ N(0, 0.05)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if ".norm" in key and key.endswith("weight") or key.endswith("scale"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("bias") or len(shape) == 1:
            out[key] = torch.randn(shape, generator=g) * 0.05
        else:
            fan_in = math.prod(shape[1:])
            out[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return out


# ---------------------------------------------------------------- the official forward, from the official keys
def _conv(sd: dict, x: torch.Tensor, name: str, stride: int = 1, padding: int = 1) -> torch.Tensor:
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, padding=padding)


def _norm(sd: dict, x: torch.Tensor, name: str) -> torch.Tensor:
    return F.group_norm(x, 32, sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _resnet(sd: dict, x: torch.Tensor, p: str) -> torch.Tensor:
    h = _conv(sd, _swish(_norm(sd, x, f"{p}.norm1")), f"{p}.conv1")
    h = _conv(sd, _swish(_norm(sd, h, f"{p}.norm2")), f"{p}.conv2")
    if f"{p}.nin_shortcut.weight" in sd:
        x = _conv(sd, x, f"{p}.nin_shortcut", padding=0)
    return x + h


def _mid(sd: dict, h: torch.Tensor, p: str) -> torch.Tensor:
    h = _resnet(sd, h, f"{p}.mid.block_1")
    a = _norm(sd, h, f"{p}.mid.attn_1.norm")
    q, k, v = (_conv(sd, a, f"{p}.mid.attn_1.{n}", padding=0).flatten(2) for n in ("q", "k", "v"))
    w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)  # [B, HW, HW]
    out = (v @ w.transpose(1, 2)).reshape(h.shape)
    h = h + _conv(sd, out, f"{p}.mid.attn_1.proj_out", padding=0)
    return _resnet(sd, h, f"{p}.mid.block_2")


def official_decode(sd: dict, z: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                    mask_channel: bool = True) -> torch.Tensor:
    """``Decoder.forward(z, image, mask)`` of the official code (``concat_mask=mask_channel``), from its
    ``decoder.*`` weights."""
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.up."))
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("decoder.up.0.block."))
    h = _mid(sd, _conv(sd, z, "decoder.conv_in"), "decoder")
    x, features = (1 - mask) * image, {}
    x = torch.cat([x, mask], dim=1) if mask_channel else x
    for n in range(len(CONDITION_LAYERS)):
        x = _conv(sd, x, f"decoder.encoder.layers.{n}", stride=1 if n < 2 else 2)
        features[tuple(x.shape)] = x
        x = F.relu(x)
    for i in reversed(range(levels)):
        level = (F.interpolate(mask, size=h.shape[-2:], mode="area") > 0).float()
        h = h * level + features[tuple(h.shape)] * (1 - level)
        for j in range(blocks):
            h = _resnet(sd, h, f"decoder.up.{i}.block.{j}")
        if i != 0:
            h = _conv(sd, F.interpolate(h, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
    h = h * mask + features[tuple(h.shape)] * (1 - mask)
    return _conv(sd, _swish(_norm(sd, h, "decoder.norm_out")), "decoder.conv_out")


def official_encode(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """The LDM / BFL ``Encoder.forward`` (moments ``[B, 2z, h, w]``), from its ``encoder.*`` weights."""
    levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
    blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
    h = _conv(sd, x, "encoder.conv_in")
    for i in range(levels):
        for j in range(blocks):
            h = _resnet(sd, h, f"encoder.down.{i}.block.{j}")
        if i != levels - 1:  # LDM Downsample: pad right/bottom by one, 3x3 conv stride 2, no padding
            h = _conv(sd, F.pad(h, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
    h = _mid(sd, h, "encoder")
    return _conv(sd, _swish(_norm(sd, h, "encoder.norm_out")), "encoder.conv_out")


def alignment_state(in_dim: int, width: int, depth: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """``Sequential(Linear(in_dim, width), depth x SingleStreamBlockAsuka(width), LayerNorm(width))`` keys."""
    shapes = {"0.weight": (width, in_dim), "0.bias": (width,)}
    for i in range(1, depth + 1):
        shapes |= {f"{i}.linear1.weight": (7 * width, width), f"{i}.linear1.bias": (7 * width,),
                   f"{i}.linear2.weight": (width, 5 * width), f"{i}.linear2.bias": (width,),
                   f"{i}.norm.query_norm.scale": (64,), f"{i}.norm.key_norm.scale": (64,),
                   f"{i}.modulation.lin.weight": (3 * width, width), f"{i}.modulation.lin.bias": (3 * width,)}
    shapes |= {f"{depth + 1}.weight": (width,), f"{depth + 1}.bias": (width,)}
    state = random_state(shapes, seed)
    state[f"{depth + 1}.weight"] = torch.rand(width) + 0.5
    return state
