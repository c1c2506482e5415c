"""Stage-2 alignment module: maps the MAE prior into the frozen generator's condition space (paper 3.2).

The MAE decoder features ``[B, L, in_dim]`` take the place of the text tokens (CLIP ``[B, 77, 768]`` for SD, T5 /
pooled CLIP for FLUX). A linear layer does the "dimension alignment"; a few self-attention blocks and a final
LayerNorm do the "distribution alignment". Two block types:

- ``vit`` (default): a pre-norm ViT block (timm ``Block``). The SD variant's block type is not published; this is
  our choice (spec 7).
- ``flux_single``: the official FLUX variant's ``SingleStreamBlockAsuka`` (released ``asuka_alignment_{t5,clip}.pt``,
  spec 2.2), :class:`FluxSingleStreamBlock`. Its final LayerNorm has eps 1e-5 (``nn.LayerNorm``'s default, as in
  the official ``Sequential``).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from asuka.utils.errors import ConfigError

BLOCKS = ("vit", "flux_single")
#: Final LayerNorm eps per block type (official FLUX heads: ``nn.LayerNorm(dim)``, eps 1e-5).
FINAL_NORM_EPS = {"vit": 1e-6, "flux_single": 1e-5}


class HeadRMSNorm(nn.Module):
    """RMS norm over the head dimension with a learned scale, in FLUX's rounding order: normalise in fp32, cast back
    to the input dtype, then multiply by the scale (``torch.nn.RMSNorm`` multiplies before the cast and differs by
    ~3e-3 in bf16)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.scale


class FluxSingleStreamBlock(nn.Module):
    """FLUX's single-stream block as the official ASUKA alignment uses it: ``x + linear2(cat[attn, gelu_tanh(mlp)])``
    with ``qkv, mlp = split(linear1(LayerNorm(x)))`` (one affine-free pre-norm, eps 1e-6), per-head RMS-normed q and k,
    plain SDPA (no mask, no RoPE). The official block also builds a ``modulation`` Linear it never calls; it is not
    created here (its released weights are dropped on conversion)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.mlp_hidden = int(dim * mlp_ratio)
        self.linear1 = nn.Linear(dim, 3 * dim + self.mlp_hidden)
        self.linear2 = nn.Linear(dim + self.mlp_hidden, dim)
        self.query_norm = HeadRMSNorm(dim // num_heads)
        self.key_norm = HeadRMSNorm(dim // num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        hidden = F.layer_norm(x, (self.dim,), eps=1e-6)
        qkv, mlp = torch.split(self.linear1(hidden), [3 * self.dim, self.mlp_hidden], dim=-1)
        q, k, v = qkv.view(b, n, 3, self.num_heads, self.dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, self.dim)
        return x + self.linear2(torch.cat([attn, F.gelu(mlp, approximate="tanh")], dim=-1))


def _vit_block(dim: int, num_heads: int, mlp_ratio: float) -> nn.Module:
    from timm.models.vision_transformer import Block  # lazy: timm's model registry costs ~1 s per process

    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


class AlignmentModule(ModelMixin, ConfigMixin):
    """``Linear(in_dim -> out_dim)``, ``depth`` self-attention blocks of type ``block``, then ``LayerNorm(out_dim)``."""

    @register_to_config
    def __init__(
        self,
        in_dim: int = 512,
        out_dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        block: str = "vit",
    ) -> None:
        super().__init__()
        if out_dim % num_heads != 0:
            raise ConfigError("model.alignment.num_heads", f"out_dim {out_dim} is not divisible by {num_heads} heads")
        if block not in BLOCKS:
            raise ConfigError("model.alignment.block", f"must be one of {', '.join(BLOCKS)}, got {block!r}")
        make = _vit_block if block == "vit" else FluxSingleStreamBlock
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList([make(out_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(out_dim, eps=FINAL_NORM_EPS[block])
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Xavier linears and unit LayerNorms, as in the MAE/ViT code the blocks come from."""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        """``prior [B, L, in_dim]`` -> cross-attention context ``[B, L, out_dim]``."""
        if prior.ndim != 3 or prior.shape[-1] != self.config.in_dim:
            raise ValueError(f"AlignmentModule expects a prior [B, L, {self.config.in_dim}], got {tuple(prior.shape)}")
        x = self.proj(prior.to(self.proj.weight.dtype))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def null_prior(mae: nn.Module, batch_size: int) -> torch.Tensor:
    """The prior of a fully masked image, ``[B, L, decoder_embed_dim]``: the MAE decoder run on mask tokens alone.

    It does not depend on the image (the MAE sees no pixel), so a zero image at the MAE's size stands in for any.
    """
    param = next(mae.parameters())
    size = int(mae.config.img_size)
    image = torch.zeros(batch_size, 3, size, size, device=param.device, dtype=param.dtype)
    mask = torch.ones(batch_size, 1, size, size, device=param.device, dtype=param.dtype)
    return mae.prior(image, mask)


def null_condition(
    mae: nn.Module,
    alignment: AlignmentModule,
    batch_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Context of a fully masked image, ``alignment(null_prior)``: the unconditional branch of CFG (spec 7) and the
    latent-augmentation condition."""
    param = next(alignment.parameters())
    out = alignment(null_prior(mae, batch_size).to(device=param.device, dtype=param.dtype))
    return out.to(device=device or out.device, dtype=dtype or out.dtype)


def encode_condition(
    mae: nn.Module, alignment: AlignmentModule, image: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-attention context ``alignment(mae.prior(image, mask))``; ``image [B,3,H,W]`` in [-1,1], mask 1 = hole.

    The MAE resizes both to its own resolution; a fully masked sample gets the :func:`null_condition`.
    """
    return alignment(mae.prior(image, mask))
