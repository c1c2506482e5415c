"""The official ASUKA decoder's condition path, on diffusers' ``MaskConditionDecoder`` (spec 3.1).

diffusers' class (Asymmetric VQGAN) feeds its condition encoder the masked image alone and blends decoder and
condition features with the mask resized by nearest neighbour. ASUKA's decoder differs in two places, both here:

- the condition encoder sees ``cat[(1 - m) x, m]`` (4 channels: it knows where the hole is, not only what is
  around it);
- at the input of every up level the blend ``h m' + cond (1 - m')`` uses ``m'`` = the mask area-downsampled, then
  ``> 0``: any feature cell that touches the hole takes the decoder's features (a dilated hole), so no known-pixel
  feature bleeds a hole edge in. The last blend, at full resolution, uses ``m`` itself.

With an all-hole mask every blend keeps the decoder's features, so the decode still equals the SD VAE's.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import MaskConditionDecoder, MaskConditionEncoder

FUSION_MASKS = ("nearest", "area_any")


def fusion_mask(mask: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``mask [B,1,H,W]`` (1 = hole) at a decoder level of ``size``: ``nearest`` (Asymmetric VQGAN) or
    ``area_any`` (ASUKA: area-downsampled, then > 0)."""
    if mode == "nearest":
        return F.interpolate(mask, size=size, mode="nearest")
    if mode == "area_any":
        return (F.interpolate(mask.float(), size=size, mode="area") > 0).to(mask.dtype)
    raise ValueError(f"fusion mask must be one of {FUSION_MASKS}, got {mode!r}")


class AsukaMaskConditionDecoder(MaskConditionDecoder):
    """``MaskConditionDecoder`` with ASUKA's condition input (``mask_channel``) and blend mask (``fusion``)."""

    def __init__(self, *args: Any, mask_channel: bool = True, fusion: str = "area_any", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fusion not in FUSION_MASKS:
            raise ValueError(f"fusion mask must be one of {FUSION_MASKS}, got {fusion!r}")
        self.mask_channel, self.fusion = bool(mask_channel), fusion
        if self.mask_channel:  # same widths as diffusers builds, one more input channel
            first = self.condition_encoder.layers[0]
            self.condition_encoder = MaskConditionEncoder(
                in_ch=first.in_channels + 1, out_ch=first.out_channels, res_ch=self.conv_in.out_channels
            )

    def _run(self, module: torch.nn.Module) -> Callable[..., Any]:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return lambda *args: self._gradient_checkpointing_func(module, *args)
        return module

    def forward(
        self,
        z: torch.Tensor,
        image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        latent_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """diffusers' decoder forward with ASUKA's condition input and blend mask."""
        sample = self.conv_in(z)
        upscale_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self._run(self.mid_block)(sample, latent_embeds).to(upscale_dtype)
        conditioned = image is not None and mask is not None
        if conditioned:
            condition = (1 - mask) * image
            if self.mask_channel:
                condition = torch.cat([condition, mask], dim=1)
            features = self._run(self.condition_encoder)(condition)
        for up_block in self.up_blocks:
            if conditioned:
                level = fusion_mask(mask, tuple(sample.shape[-2:]), self.fusion)
                sample = sample * level + features[str(tuple(sample.shape))] * (1 - level)
            sample = self._run(up_block)(sample, latent_embeds)
        if conditioned:
            sample = sample * mask + features[str(tuple(sample.shape))] * (1 - mask)
        sample = self.conv_norm_out(sample) if latent_embeds is None else self.conv_norm_out(sample, latent_embeds)
        return self.conv_out(self.conv_act(sample))
