"""SD-1.5 inpainting as a backbone: a thin face over :mod:`asuka.models.sd`, which stays the one implementation
(loading, the 9-channel UNet input, the DDPM schedule); nothing here computes anything of its own."""
from __future__ import annotations

from typing import Any

import torch

from asuka.models import sd
from asuka.models.backbones.base import Backbone, ConditionShapes


class SD15Inpaint(Backbone):
    """Frozen SD-1.5 inpainting: tokens ``[B, L, 768]`` (no pooled vector), DDPM epsilon objective, DDIM sampling."""

    name = "sd15_inpaint"
    config_key = "sd"
    paths_key = "sd_inpaint"
    pixel_multiple = 8

    def load(self, block: Any, path: Any, device: str | torch.device = "cpu", dtype: Any = None,
             parts: tuple[str, ...] | None = None) -> sd.SDComponents:
        return sd.load_sd_inpaint(block, path, device=device, dtype=dtype, parts=parts or sd.SD_SUBFOLDERS)

    def condition_shapes(self, components: sd.SDComponents) -> ConditionShapes:
        return ConditionShapes(token_dim=int(components.unet.config.cross_attention_dim))

    def inference_scheduler(self, components: sd.SDComponents) -> Any:
        return sd.build_inference_scheduler(components.scheduler.config)

    def inpaint_input(self, components: sd.SDComponents, noisy_latents: torch.Tensor, image: torch.Tensor,
                      mask: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The 9-channel UNet input (:func:`asuka.models.sd.unet_input`)."""
        mask_latent, masked_latents = sd.encode_masked_image(components.vae, image, mask, generator=generator)
        return sd.unet_input(noisy_latents, mask_latent, masked_latents)

    def noisy_input_and_target(self, components: sd.SDComponents, x0: torch.Tensor, noise: torch.Tensor,
                               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM: ``add_noise(x0, noise, t)`` and the epsilon target."""
        return components.scheduler.add_noise(x0, noise, t), noise

    # ---------------------------------------------------------------- stage 2 (what AlignStage computed before)
    align_latent_cache = True

    def denoiser(self, components: sd.SDComponents) -> torch.nn.Module:
        return components.unet

    def training_inputs(self, components: sd.SDComponents, image: torch.Tensor, mask: torch.Tensor,
                        latents: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Scaled latents of the image and of the masked image (posterior samples), and the latent-size mask."""
        vae = components.vae
        if latents is not None:
            return {"x0": latents[0], "masked_latents": latents[1], "mask_latent": sd.latent_mask(vae, mask)}
        x0 = sd.encode_latents(vae, image)
        mask_latent, masked_latents = sd.encode_masked_image(vae, image, mask)
        return {"x0": x0, "masked_latents": masked_latents, "mask_latent": mask_latent}

    def head_conditions(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return (outputs["alignment"],)

    def training_prediction(self, components: sd.SDComponents, denoiser: torch.nn.Module,
                            inputs: dict[str, torch.Tensor], conditions: tuple[torch.Tensor, ...],
                            options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM epsilon objective: noise, then t ~ U{0..T-1} (in that order), the 9-channel UNet input."""
        x0 = inputs["x0"]
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)  # layout-independent draw
        t = torch.randint(0, components.scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy, target = self.noisy_input_and_target(components, x0, noise, t)
        model_in = sd.unet_input(noisy, inputs["mask_latent"], inputs["masked_latents"]).to(components.unet.dtype)
        return self.predict(components, denoiser, model_in, t, conditions), target

    def predict(self, components: sd.SDComponents, denoiser: torch.nn.Module, model_in: torch.Tensor,
                t: torch.Tensor, conditions: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The UNet's epsilon for the 9-channel ``model_in`` under ``conditions`` (SD-1.5: the context tokens)."""
        return denoiser(model_in, t, encoder_hidden_states=conditions[0].to(model_in.dtype)).sample
