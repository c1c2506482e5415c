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

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision.transforms import ColorJitter

from asuka.data.color import boundary_color_error, error_map_to_image, ring_error_map
from asuka.data.datasets import TrainDataset, build_image_source
from asuka.data.masks import build_mask_generator
from asuka.models.decoder import build_decoder
from asuka.models.sd import load_sd_inpaint
from asuka.training.decoder_losses import DecoderLoss, NLayerDiscriminator, build_lpips
from asuka.training.engine import default_run_dir, fit
from asuka.training.latent_aug import DecoderTrainDataset, LatentCache
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput
from asuka.utils.errors import ConfigError

log = logging.getLogger("asuka.train")


def _fraction(cfg: DictConfig, key: str) -> float:
    value = cfg.decoder_train.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"decoder_train.{key}", f"must be in [0, 1], got {value!r}")
    return float(value)


class DecoderStage(Stage):
    name = "decoder"

    def __init__(
        self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype, run_dir: Path | None = None
    ) -> None:
        super().__init__(cfg, device, weight_dtype)
        dcfg = cfg.decoder_train
        latent_aug_prob, all_hole_prob = _fraction(cfg, "latent_aug_prob"), _fraction(cfg, "all_hole_prob")
        self.posterior = str(dcfg.get("posterior", "sample"))
        if self.posterior not in ("sample", "mode"):
            raise ConfigError("decoder_train.posterior", f"must be sample or mode, got {self.posterior!r}")
        resolution = int(cfg.resolution)
        items = build_image_source(cfg.dataset, "train")
        cache = None
        if latent_aug_prob > 0:  # fail before any model is loaded
            cache = LatentCache.open(cfg.paths.latent_cache, num_items=len(items), resolution=resolution)
        base = TrainDataset(items, resolution, build_mask_generator(cfg.mask, cfg.paths), int(cfg.seed))
        self._dataset = DecoderTrainDataset(base, cache, latent_aug_prob, all_hole_prob, int(cfg.seed))

        # Only the VAE is needed: load on the CPU, keep the VAE, drop the UNet.
        sd = load_sd_inpaint(cfg.model.sd, cfg.paths.sd_inpaint, "cpu", torch.float32)
        self.sd_vae = sd.vae.to(device)
        del sd
        decoder = build_decoder(cfg.model.decoder, self.sd_vae, cfg.paths.get("decoder_init")).to(device).train()
        discriminator = NLayerDiscriminator(
            base_channels=int(dcfg.get("disc_channels", 64)), n_layers=int(dcfg.disc_layers)
        ).to(device).train()
        self.trainable = {"decoder": decoder, "discriminator": discriminator}

        lpips_model = build_lpips("vgg", cfg.paths.get("lpips_dir"), bool(dcfg.get("lpips_pretrained_trunk", True)))
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
        self.run_dir = run_dir
        self.validation_logs: dict[str, float] = {}
        self._last_step = 0

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
        with torch.autocast(image.device.type, enabled=False):
            dist = self.sd_vae.encode(image.float()).latent_dist
            return dist.sample() if sample else dist.mode()

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
        logs["latent_aug_frac"] = float(use.float().mean())
        logs["all_hole_frac"] = float((mask.flatten(1).amin(dim=1) > 0.5).float().mean())
        logs.update(self.validation_logs)  # carried so metrics.jsonl shows the latest validation numbers
        self._last_step = step + 1
        return StepOutput(losses, logs)

    @torch.no_grad()
    def validation_rows(self, batch: dict) -> list[torch.Tensor]:
        """Original, masked input, SD VAE decode, our decode, our colour error in the known ring (white = 20 dE).

        The latent is the cached one where the sample uses it (a UNet latent), else the clean image's mode.
        Logs the mean boundary Delta E of the SD VAE and of ours.
        """
        image, mask = batch["image"].float(), batch["mask"].float()
        latents = self._encode(image, sample=False)
        if "latent" in batch:
            use = batch["use_latent"].bool().view(-1)
            latents[use] = batch["latent"].float()[use]
        with torch.autocast(image.device.type, enabled=False):
            sd_out = self.sd_vae.decode(latents).sample.clamp(-1, 1)
        ours = self.trainable["decoder"](image, mask=mask, latents=latents).sample.float().clamp(-1, 1)
        err_sd = torch.nanmean(boundary_color_error(sd_out, image, mask, self.band))
        err_ours = torch.nanmean(boundary_color_error(ours, image, mask, self.band))
        self.validation_logs = {"val_boundary_de_sd_vae": float(err_sd), "val_boundary_de_ours": float(err_ours)}
        self._write_validation_logs()
        ring = error_map_to_image(ring_error_map(ours, image, mask, self.band))
        return [image, image * (1 - mask), sd_out, ours, ring]

    def _write_validation_logs(self) -> None:
        from accelerate import PartialState

        log.info("validation after step %d: boundary dE sd-vae %.3f, ours %.3f", self._last_step,
                 self.validation_logs["val_boundary_de_sd_vae"], self.validation_logs["val_boundary_de_ours"])
        if self.run_dir is None or not PartialState().is_main_process:
            return
        path = Path(self.run_dir) / "val" / "boundary_color_error.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            clean = {k: (v if math.isfinite(v) else None) for k, v in self.validation_logs.items()}
            fh.write(json.dumps({"step": self._last_step, **clean}) + "\n")

    def final_modules(self) -> dict[str, torch.nn.Module]:
        """Only the decoder goes to ``final/`` (the discriminator lives in the checkpoints)."""
        return {"decoder": self.trainable["decoder"]}

    def state_dict(self) -> dict:
        return {"last_step": self._last_step}

    def load_state_dict(self, state: dict) -> None:
        self._last_step = int(state.get("last_step", 0))


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_decoder.py``: stage 3 on the shared engine."""
    folder = Path(run_dir) if run_dir is not None else default_run_dir()
    return fit(cfg, lambda c, d, t: DecoderStage(c, d, t, run_dir=folder), folder)
