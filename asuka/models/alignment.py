"""Stage-2 alignment module: maps the MAE prior into the frozen SD UNet's cross-attention space (paper 3.2).

The MAE decoder features ``[B, L, in_dim]`` take the place of the CLIP text tokens ``[B, 77, 768]``. A linear layer
does the "dimension alignment"; a few self-attention blocks and a final LayerNorm do the "distribution alignment".
The block type of the SD variant is not published; a pre-norm ViT block (timm ``Block``) is our choice (spec 7).
"""
from __future__ import annotations

from functools import partial

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from timm.models.vision_transformer import Block
from torch import nn

from asuka.utils.errors import ConfigError


class AlignmentModule(ModelMixin, ConfigMixin):
    """``Linear(in_dim -> out_dim)``, ``depth`` pre-norm self-attention blocks, then ``LayerNorm(out_dim)``."""

    @register_to_config
    def __init__(
        self,
        in_dim: int = 512,
        out_dim: int = 768,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if out_dim % num_heads != 0:
            raise ConfigError("model.alignment.num_heads", f"out_dim {out_dim} is not divisible by {num_heads} heads")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            [Block(out_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        self.norm = norm(out_dim)
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
