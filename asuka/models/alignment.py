"""Stage-2 alignment module: maps the MAE prior into the frozen SD UNet's cross-attention space (paper 3.2).

The MAE decoder features ``[B, L, in_dim]`` take the place of the CLIP text tokens ``[B, 77, 768]``. A linear layer
does the "dimension alignment"; a few self-attention blocks and a final LayerNorm do the "distribution alignment".
The block type of the SD variant is not published; a pre-norm ViT block (timm ``Block``) is our choice (spec 7).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
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


def fully_masked(mae: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: samples in which every MAE patch has a hole pixel, so the MAE has nothing to encode.

    Mirrors the MAE's own rule (binarise at 0.5, area-resize to ``img_size`` keeping any hole pixel, then
    :meth:`patch_mask`).
    """
    size = int(mae.config.img_size)
    m = (mask > 0.5).float()
    if m.shape[-2:] != (size, size):
        m = (F.adaptive_avg_pool2d(m, (size, size)) > 0).float()
    return mae.patch_mask(m).bool().all(dim=1)


def null_condition(
    mae: nn.Module,
    alignment: AlignmentModule,
    batch_size: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Context of a fully masked image: ``alignment(zeros [B, L, in_dim])``.

    The MAE refuses an image with every patch masked (its encoder has no visible token, which gives NaN); the
    official code replaces that NaN prior by zeros, so the zero prior is what "the prior of a fully masked image"
    means. It is the unconditional branch of CFG and the latent-augmentation condition.
    """
    param = next(alignment.parameters())
    num_tokens = int(mae.config.img_size // mae.config.patch_size) ** 2
    prior = torch.zeros(batch_size, num_tokens, alignment.config.in_dim, device=param.device, dtype=param.dtype)
    out = alignment(prior)
    return out.to(device=device or out.device, dtype=dtype or out.dtype)


def encode_condition(mae: nn.Module, alignment: AlignmentModule, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-attention context ``alignment(mae.prior(image, mask))`` of ``image [B,3,H,W] in [-1,1]``, ``mask`` 1 = hole.

    The MAE resizes its inputs to its own resolution. Samples whose mask covers every MAE patch get the
    :func:`null_condition` instead of an error. This is the one place the pipeline and the training stage get the
    condition from.
    """
    full = fully_masked(mae, mask)
    if not bool(full.any()):
        return alignment(mae.prior(image, mask))
    out = null_condition(mae, alignment, image.shape[0])
    keep = (~full).nonzero().flatten()
    if keep.numel():
        out = out.clone()
        out[keep] = alignment(mae.prior(image[keep], mask[keep])).to(out.dtype)
    return out
