"""Stage 3: train the inpainting-specialised decoder (paper 3.3; spec 3 and 7).

Per sample the latent is either the SD VAE's encoding of a COLOUR-JITTERED copy of the image, or (with probability
``latent_aug_prob``, when the offline cache has it) the cached one-step UNet estimate of that image's fixed crop.
The decoder is conditioned on the ORIGINAL unmasked pixels and must reproduce the ORIGINAL image: so it learns to
correct the colour shifts and UNet errors a latent carries, from the known pixels. With probability
``all_hole_prob`` the mask is all ones (no known pixels), so it stays a plain decoder too.

Latents are posterior SAMPLES (as Asymmetric VQGAN trains), drawn from the torch RNG the engine checkpoints
(``decoder_train.posterior: mode`` for the mean). The SD VAE encoder is a separate frozen copy in float32; the
trainable AsukaDecoder's own (identical, frozen) encoder is not run during training.
"""
from __future__ import annotations

import contextlib

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter

from asuka.data.color import boundary_color_error, error_map_to_image, ring_error_map
from asuka.data.datasets import build_train_dataset
from asuka.models.backbones import backbone_for
from asuka.models.decoder import build_decoder
from asuka.models.lpips import build_lpips
from asuka.training.decoder_losses import DecoderLoss, NLayerDiscriminator
from asuka.training.engine import fit
from asuka.training.latent_aug import DecoderTrainDataset, open_latent_aug_cache
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput, Validation
from asuka.training.validate import check_fraction
from asuka.utils.errors import ConfigError


class DecoderStage(Stage):
    name = "decoder"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        dcfg = cfg.decoder_train
        latent_aug_prob = check_fraction(dcfg.get("latent_aug_prob"), "decoder_train.latent_aug_prob")
        all_hole_prob = check_fraction(dcfg.get("all_hole_prob"), "decoder_train.all_hole_prob")
        self.posterior = str(dcfg.get("posterior", "sample"))
        if self.posterior not in ("sample", "mode"):
            raise ConfigError("decoder_train.posterior", f"must be sample or mode, got {self.posterior!r}")
        self.vae_encode = str(dcfg.get("vae_encode", "fp32"))
        if self.vae_encode not in ("fp32", "autocast"):
            raise ConfigError("decoder_train.vae_encode", f"must be fp32 or autocast, got {self.vae_encode!r}")
        resolution = int(cfg.resolution)
        base = build_train_dataset(cfg)
        if latent_aug_prob > 0 and base.image_work == "gpu":  # cached samples carry decoded images: one batch mixes
            raise ConfigError("dataset.image_work", "gpu decoding does not mix with the latent-augmentation cache; "
                                                    "set decoder_train.latent_aug_prob=0 or dataset.image_work=cpu")
        cache = None
        if latent_aug_prob > 0:  # fail before any model is loaded
            cache = open_latent_aug_cache(cfg.paths.latent_cache, len(base), resolution, backbone_for(cfg.model))
        self._dataset = DecoderTrainDataset(base, cache, latent_aug_prob, all_hole_prob, int(cfg.seed))

        backbone = backbone_for(cfg.model)  # SD-1.5's VAE, or FLUX's 16-channel AE (raw latents, no quant convs)
        self.sd_vae = backbone.load(cfg.model[backbone.config_key], cfg.paths.get(backbone.paths_key), device,
                                    torch.float32, parts=("vae",)).vae
        decoder = build_decoder(cfg.model.decoder, self.sd_vae, cfg.paths.get("decoder_init")).to(device).train()
        discriminator = NLayerDiscriminator(
            base_channels=int(dcfg.get("disc_channels", 64)), n_layers=int(dcfg.disc_layers)
        ).to(device).train()
        self.trainable = {"decoder": decoder, "discriminator": discriminator}

        trunk = "pretrained" if dcfg.get("lpips_pretrained_trunk", True) else "random"
        lpips_model, _ = build_lpips("vgg", trunk, cfg.paths.get("lpips_dir"))
        self.loss = DecoderLoss(
            lpips_model.to(device),
            lpips_weight=float(dcfg.lpips_weight),
            disc_weight=float(dcfg.disc_weight),
            disc_start=int(dcfg.disc_start),
        )
        jitter = dcfg.color_jitter
        self.jitter = ColorJitter(
            brightness=float(jitter.brightness),
            contrast=float(jitter.contrast),
            saturation=float(jitter.saturation),
            hue=float(jitter.hue),
        )
        self.band = int(dcfg.get("boundary_band", 4))

    def train_dataset(self) -> Dataset:
        return self._dataset

    def optimizers(self) -> list[OptimizerSpec]:
        return [
            OptimizerSpec("decoder", ["decoder"], self.cfg.optim),
            OptimizerSpec("discriminator", ["discriminator"], self.cfg.optim),
        ]

    # ------------------------------------------------------------------------------------------------ latents
    def color_augment(self, image: torch.Tensor) -> torch.Tensor:
        """Independent ColorJitter per sample (torch global RNG), on [0, 1] and back to [-1, 1]."""
        x = (image.float() + 1) / 2
        out = torch.stack([self.jitter(x[i]) for i in range(x.shape[0])])
        return out.clamp(0, 1) * 2 - 1

    @torch.no_grad()
    def _encode(self, image: torch.Tensor, sample: bool) -> torch.Tensor:
        """Float32 latents of the frozen SD VAE. ``vae_encode: fp32`` encodes in float32 with autocast off (exact);
        ``autocast`` under the step's autocast (bf16 on GPU runs: ~8% of a paper-size step saved)."""
        exact = self.vae_encode == "fp32"
        with torch.autocast(image.device.type, enabled=False) if exact else contextlib.nullcontext():
            dist = self.sd_vae.encode(image.float()).latent_dist
            return (dist.sample() if sample else dist.mode()).float()

    @torch.no_grad()
    def training_latents(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents for a training batch and the boolean ``[B]`` of samples that use the cached latent.

        Only the samples without a cached latent are colour-jittered and encoded; the image in the batch (the
        condition and the target) is never changed.
        """
        image = batch["image"]
        use = batch.get("use_latent")
        if use is None:
            use = torch.zeros(image.shape[0], dtype=torch.bool, device=image.device)
        use = use.bool().view(-1)
        need = (~use).nonzero().flatten()
        if "latent" in batch:
            latents = batch["latent"].float().clone()
        else:
            latents = None
        if need.numel():
            encoded = self._encode(self.color_augment(image[need]), self.posterior == "sample")
            if latents is None:
                latents = encoded.new_zeros((image.shape[0], *encoded.shape[1:]))
            latents[need] = encoded
        return latents, use

    # ------------------------------------------------------------------------------------------------- steps
    def training_step(self, batch: dict, step: int) -> StepOutput:
        image, mask = batch["image"], batch["mask"]
        latents, use = self.training_latents(batch)
        decoder = self.trainable["decoder"]
        recon = decoder(image, mask=mask, latents=latents).sample
        last_layer = unwrap(decoder).decoder.conv_out.weight
        losses, logs = self.loss(image, recon, step, last_layer, self.trainable["discriminator"])
        logs["latent_aug_frac"] = use.float().mean()  # tensors: the engine reads all logs once per step
        logs["all_hole_frac"] = (mask.flatten(1).amin(dim=1) > 0.5).float().mean()
        return StepOutput(losses, logs)

    @torch.no_grad()
    def validate(self, batch: dict) -> Validation:
        """Original, masked input, SD VAE decode, our decode, our colour error in the known ring (white = 20 dE),
        and the mean boundary Delta E of the SD VAE and of ours.

        The latent is the cached one where the sample uses it (a UNet latent), else the clean image's mode.
        """
        image, mask = batch["image"].float(), batch["mask"].float()
        latents = self._encode(image, sample=False)
        if "latent" in batch:
            use = batch["use_latent"].bool().view(-1)
            latents[use] = batch["latent"].float()[use]
        with torch.autocast(image.device.type, enabled=False):
            sd_out = self.sd_vae.decode(latents).sample.clamp(-1, 1)
        ours = self.trainable["decoder"](image, mask=mask, latents=latents).sample.float().clamp(-1, 1)
        logs = {
            "boundary_de_sd_vae": float(torch.nanmean(boundary_color_error(sd_out, image, mask, self.band))),
            "boundary_de_ours": float(torch.nanmean(boundary_color_error(ours, image, mask, self.band))),
        }
        ring = error_map_to_image(ring_error_map(ours, image, mask, self.band))
        return Validation([image, image * (1 - mask), sd_out, ours, ring], logs)

    def final_modules(self) -> dict[str, torch.nn.Module]:
        """Only the decoder goes to ``final/`` (the discriminator lives in the checkpoints)."""
        return {"decoder": self.trainable["decoder"]}


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_decoder.py``: stage 3 on the shared engine."""
    return fit(cfg, DecoderStage, run_dir)
