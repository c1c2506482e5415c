"""The composite LAR-Gen denoiser: main 9-channel UNet + Assign adapter (+ a reference bank from the RefineNet).

One ``nn.Module`` owns the UNet and the adapter, so a DDP wrapper around it sees every parameter the forward uses
(the adapter's layers run inside the UNet's attention through the processors).
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from asuka.models.largen.assign import AssignAdapter
from asuka.models.largen.attention import READ, install_processors


def cast_added(added: dict[str, torch.Tensor] | None, dtype: torch.dtype) -> dict[str, torch.Tensor] | None:
    """SDXL's ``added_cond_kwargs`` in the UNet's dtype (None, SD-1.5's, stays None)."""
    return None if added is None else {k: v.to(dtype) for k, v in added.items()}


class LarGenNet(nn.Module):
    """``forward(sample, t, text_embeds, image_embeds, ip_scale, reference_bank, reference_keep, added) -> eps``."""

    def __init__(self, unet: UNet2DConditionModel, assign: AssignAdapter) -> None:
        super().__init__()
        self.unet, self.assign = unet, assign
        install_processors(unet, assign, reference=READ)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        text_embeds: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
        ip_scale: float = 1.0,
        reference_bank: dict[str, torch.Tensor] | None = None,
        reference_keep: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``sample``: the 9-channel input (:func:`asuka.models.sd.unet_input`); ``image_embeds``: CLIP penultimate
        hidden states, or None for a text-only prompt (the image branch is skipped); ``reference_bank`` from
        :class:`RefineNet`, ``reference_keep [B]`` 0 for samples that must not see it; ``added_cond_kwargs``: SDXL's
        pooled vector and size ids (None on SD-1.5)."""
        dtype = self.unet.dtype
        skip = image_embeds is None or float(ip_scale) == 0.0
        ip_tokens = None if skip else self.assign(image_embeds.to(self.assign.dtype))
        kwargs = {"ip_tokens": ip_tokens, "ip_scale": float(ip_scale), "reference_bank": reference_bank,
                  "reference_keep": reference_keep}
        return self.unet(
            sample.to(dtype), timestep, encoder_hidden_states=text_embeds.to(dtype), cross_attention_kwargs=kwargs,
            added_cond_kwargs=cast_added(added_cond_kwargs, dtype),
        ).sample
