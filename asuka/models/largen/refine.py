"""Refine: a RefineNet (a copy of the UNet with a 4-channel input) over the noised subject latent.

Its cross-attention reads a trainable detail encoder ``Linear(clip_width -> cross_attention_dim)`` over CLIP ViT-H's
last hidden state; its up-block self-attention layers write their normed hidden states into a reference bank keyed by
layer name, which the main UNet's up-block self-attention reads as extra keys and values (released LAR-Gen). The
RefineNet's output itself is never used. On SDXL it is a copy of the ``text_time`` UNet, so it also takes SDXL's added
conditions (the caller's ``added_cond_kwargs``: released ``LargenUNetXL`` feeds its ``ref_label_emb`` the main UNet's
vector with the pooled text replaced by the null prompt's).
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from asuka.models.largen.attention import WRITE, install_processors
from asuka.models.largen.net import cast_added

LATENT_CHANNELS = 4


def refine_unet_config(unet: UNet2DConditionModel) -> dict[str, Any]:
    """The main UNet's config with a 4-channel input (no mask / masked-image channels)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return {**config, "in_channels": LATENT_CHANNELS}


class RefineNet(ModelMixin, ConfigMixin):
    """``unet`` (4-channel copy of the main UNet) + ``detail_encoder``; ``forward`` fills a reference bank."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict, image_embed_dim: int = 1280) -> None:
        super().__init__()
        self.unet = UNet2DConditionModel.from_config(unet_config)
        self.detail_encoder = nn.Linear(image_embed_dim, self.unet.config.cross_attention_dim)
        install_processors(self.unet, reference=WRITE)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, image_embed_dim: int = 1280) -> "RefineNet":
        """Start from the main UNet's weights; ``conv_in`` keeps its noisy-latent channels (the first four). Our
        choice: the released SDXL code (``LargenUNetXL.init_from_ckpt``) copies the UNet too, its ``conv_in`` from the
        4-channel text-to-image base it starts from."""
        net = cls(refine_unet_config(unet), image_embed_dim)
        state = {k: v for k, v in unet.state_dict().items()}
        state["conv_in.weight"] = state["conv_in.weight"][:, :LATENT_CHANNELS]
        net.unet.load_state_dict(state, strict=True)
        return net.to(device=unet.device)

    def enable_gradient_checkpointing(self) -> None:
        self.unet.enable_gradient_checkpointing()

    def forward(
        self,
        subject_latents: torch.Tensor,
        timestep: torch.Tensor,
        clip_last_hidden: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run on the noised subject latents at the main UNet's timestep; returns the filled reference bank.
        ``added_cond_kwargs``: SDXL's pooled vector and size ids (None on SD-1.5)."""
        bank: dict[str, torch.Tensor] = {}
        dtype = self.unet.dtype
        self.unet(
            subject_latents.to(dtype),
            timestep,
            encoder_hidden_states=self.detail_encoder(clip_last_hidden.to(dtype)),
            cross_attention_kwargs={"reference_bank": bank},
            added_cond_kwargs=cast_added(added_cond_kwargs, dtype),
        )
        return bank
