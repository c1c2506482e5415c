"""Stage 2: train the alignment module against the frozen SD-1.5 inpainting UNet (paper 3.2).

The frozen MAE gives the prior of the masked image; with probability p it gives the prior of the whole (unmasked)
image instead, the MAE's "reconstructed prior", with p decaying linearly from 1.0 to 0.1 over the first 2,000 steps
(official issue #1). Only the alignment module trains; the loss is SD's epsilon objective.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset

from asuka.data.datasets import build_train_dataset
from asuka.models.alignment import AlignmentModule
from asuka.models.mae_import import load_frozen_mae
from asuka.models.sd import (
    build_inference_scheduler,
    encode_latents,
    encode_masked_image,
    latent_mask,
    load_sd_inpaint,
    unet_input,
)
from asuka.training.align_latents import CachedAlignDataset, open_align_latents, sample_cached_latents
from asuka.training.engine import fit
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput, Validation


def reconstructed_prior_prob(step: int, p_start: float, p_end: float, decay_steps: int) -> float:
    """p at optimizer step ``step``: linear from ``p_start`` to ``p_end`` over ``decay_steps``, then fixed."""
    if decay_steps <= 0 or step >= decay_steps:
        return p_end
    return p_start + (p_end - p_start) * step / decay_steps


class AlignStage(Stage):
    name = "alignment"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self._dataset = build_train_dataset(cfg)
        if cfg.paths.get("align_latents"):  # precomputed VAE latents; checked before any model loads
            self._dataset = CachedAlignDataset(self._dataset, open_align_latents(cfg, self._dataset))
        frozen_dtype = weight_dtype if cfg.align.cast_frozen else torch.float32
        self.sd = load_sd_inpaint(cfg.model.sd, cfg.paths.sd_inpaint, device, frozen_dtype)
        if cfg.align.gradient_checkpointing:
            self.sd.unet.enable_gradient_checkpointing()
        if cfg.align.channels_last:
            self.sd.unet.to(memory_format=torch.channels_last)
            self.sd.vae.to(memory_format=torch.channels_last)
        self.unet = torch.compile(self.sd.unet) if cfg.align.compile_unet else self.sd.unet
        self.mae = load_frozen_mae(cfg).to(device)
        self.trainable = {"alignment": AlignmentModule(**cfg.model.alignment).to(device).train()}

    def train_dataset(self) -> Dataset:
        return self._dataset

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("alignment", ["alignment"], self.cfg.optim)]

    def prior_prob(self, step: int) -> float:
        p = self.cfg.align.reconstructed_prior
        return reconstructed_prior_prob(step, float(p.p_start), float(p.p_end), int(p.decay_steps))

    @torch.no_grad()
    def _frozen_inputs(self, batch: dict, step: int) -> tuple[torch.Tensor, ...]:
        """Everything the frozen MAE and VAE contribute to a step: prior, target latents, 9-channel conditions
        (the latents drawn from the batch's cached ``"moments"`` when training reads ``paths.align_latents``)."""
        image, mask = batch["image"], batch["mask"]
        swap = torch.rand(image.shape[0], device=image.device) < self.prior_prob(step)
        prior_mask = mask * (~swap).to(mask.dtype)[:, None, None, None]  # swapped samples: nothing masked
        prior = self.mae.prior(image.float(), prior_mask.float())
        vae = self.sd.vae
        if "moments" in batch:
            latents, masked_latents = sample_cached_latents(batch["moments"], vae.config.scaling_factor)
            mask_latent = latent_mask(vae, mask)
        else:
            latents = encode_latents(vae, image)
            mask_latent, masked_latents = encode_masked_image(vae, image, mask)
        return prior, latents, mask_latent, masked_latents, swap.float().mean()

    def training_step(self, batch: dict, step: int) -> StepOutput:
        prior, latents, mask_latent, masked_latents, swapped = self._frozen_inputs(batch, step)
        scheduler = self.sd.scheduler
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)  # layout-independent draw
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        context = self.trainable["alignment"](prior)
        unet, dtype = self.unet, self.sd.unet.dtype
        eps = unet(
            unet_input(noisy, mask_latent, masked_latents).to(dtype), t, encoder_hidden_states=context.to(dtype)
        ).sample
        loss = F.mse_loss(eps.float(), noise.float())
        return StepOutput({"alignment": loss}, {"p_reconstructed": self.prior_prob(step), "swapped": float(swapped)})

    def validate(self, batch: dict) -> Validation:
        """Image, masked image, and the inpainting the current alignment module gives (DDIM, no CFG)."""
        from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

        image, mask = batch["image"], batch["mask"]
        pipe = AsukaInpaintPipeline(
            vae=self.sd.vae,
            unet=self.sd.unet,
            scheduler=build_inference_scheduler(self.sd.scheduler.config),
            mae=self.mae,
            alignment=unwrap(self.trainable["alignment"]),
            decoder=None,
        )
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(int(self.cfg.seed))
        out = pipe(
            image=(image.float() + 1) / 2,
            mask_image=mask.float(),
            num_inference_steps=int(self.cfg.align.val_inference_steps),
            generator=generator,
            output_type="pt",
        ).images
        return Validation([image, image * (1 - mask), out.to(image.device) * 2 - 1])


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_align.py``: stage 2 on the shared engine."""
    return fit(cfg, AlignStage, run_dir)
