"""LAR-Gen training on the one engine: stage A (``largen.stage=assign``) trains the whole 9-channel UNet and the
Assign adapter; stage B (``largen.stage=refine``) trains the RefineNet and its detail encoder with stage A frozen.

Both run on SD-1.5 and on SDXL (``model=sdxl|sdxl_tiny``; on SDXL stage A may start from the converted release, and
stage B trains the only SDXL RefineNet there is: none was released). Both use SD's epsilon objective on quadruplets
(asuka.training.largen_data). A dropped subject means zeroed CLIP pixels (and no reference), a dropped prompt the
empty one: the unconditional branch of the pipeline's guidance.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from asuka.data.images import pil_to_tensor
from asuka.models.backbones import is_tiny
from asuka.models.largen.clip_image import clip_pixels, image_hidden_states
from asuka.models.largen.net import LarGenNet
from asuka.models.sd import encode_latents, encode_masked_image, unet_input
from asuka.pipelines.largen_build import build_assign, build_refine, inference_scheduler, load_parts
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline, prompt_conditions, refine_conditions
from asuka.training.engine import fit
from asuka.training.largen_data import build_quadruplet_dataset
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput, Validation
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError

log = logging.getLogger(__name__)
STAGES = ("assign", "refine")


def text_tile(text: str, size: int) -> torch.Tensor:
    """The prompt drawn on a white square (a validation-grid cell), ``[3, size, size]`` in [-1, 1]."""
    tile = Image.new("RGB", (size, size), "white")
    draw, chars = ImageDraw.Draw(tile), max(4, size // 7)
    lines = [text[i : i + chars] for i in range(0, len(text), chars)] or ["(no prompt)"]
    for row, line in enumerate(lines[: max(1, size // 12)]):
        draw.text((2, 2 + 12 * row), line, fill="black")
    return pil_to_tensor(tile)


class LarGenStage(Stage):
    """What both stages share: the quadruplets, the frozen encoders, the frozen inputs of a step, validation."""

    refine_trains = False

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        if str(cfg.largen.stage) not in STAGES:
            raise ConfigError("largen.stage", f"unknown stage '{cfg.largen.stage}' (assign | refine)")

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self._dataset = build_quadruplet_dataset(cfg)
        self.parts = load_parts(cfg, device, train_unet=not self.refine_trains)
        self.sd = self.parts.sd

    def train_dataset(self) -> Dataset:
        return self._dataset

    @torch.no_grad()
    def _frozen_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        image, mask, keep = batch["image"], batch["mask"], batch["subject_keep"].float()
        vae, parts = self.sd.vae, self.parts
        mask_latent, masked = encode_masked_image(vae, image, mask)
        pixels = clip_pixels(batch["subject"], parts.image_encoder) * keep.view(-1, 1, 1, 1).to(parts.image_encoder.dtype)
        penultimate, last = image_hidden_states(parts.image_encoder, pixels)
        text, added = prompt_conditions(parts, batch["caption"], image.shape[-2:])
        return {"latents": encode_latents(vae, image), "mask_latent": mask_latent, "masked": masked, "keep": keep,
                "text": text, "added": added, "penultimate": penultimate, "last": last}

    def _noised(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise = torch.randn(latents.shape, device=latents.device, dtype=latents.dtype)
        t = torch.randint(0, self.sd.scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        return noise, t, self.sd.scheduler.add_noise(latents, noise, t)

    def _modules(self) -> tuple[LarGenNet, object]:
        """The current (unwrapped) main net and RefineNet (None in stage A)."""
        raise NotImplementedError

    def validate(self, batch: dict) -> Validation:
        """Rows: scene, masked scene, subject (grey if dropped), prompt, and the output at each of
        ``largen.val_image_scales`` (DDIM, the pipeline's guidance)."""
        net, refine = self._modules()
        pipe = LarGenInpaintPipeline(
            vae=self.sd.vae, text_encoder=self.parts.text_encoder, tokenizer=self.parts.tokenizer, unet=net.unet,
            assign=net.assign, image_encoder=self.parts.image_encoder,
            scheduler=inference_scheduler(self.sd.scheduler.config), refine=refine, decoder=None,
            text_encoder_2=self.parts.text_encoder_2, tokenizer_2=self.parts.tokenizer_2,
        )
        pipe.set_progress_bar_config(disable=True)
        image, mask, subject, keep = batch["image"].float(), batch["mask"].float(), batch["subject"].float(), batch["subject_keep"]
        rows = [image, image * (1 - mask), subject * keep.view(-1, 1, 1, 1).float(),
                torch.stack([text_tile(c, image.shape[-1]) for c in batch["caption"]]).to(image.device)]
        for scale in self.cfg.largen.val_image_scales:
            outs = []
            for i in range(image.shape[0]):
                generator = torch.Generator(device="cpu").manual_seed(int(self.cfg.seed) + i)
                with torch.autocast(image.device.type, enabled=False):
                    out = pipe.sample(image[i : i + 1], mask[i : i + 1], batch["caption"][i],
                                      subject[i : i + 1] if keep[i] > 0.5 else None, image_scale=float(scale),
                                      num_inference_steps=int(self.cfg.largen.val_inference_steps), generator=generator)
                outs.append(out.to(image.device) * mask[i : i + 1] + image[i : i + 1] * (1 - mask[i : i + 1]))
            rows.append(torch.cat(outs))
        return Validation(rows)


class AssignStage(LarGenStage):
    """Stage A: UNet + Assign adapter, one composite module (so DDP sees the adapter)."""

    name = "largen_assign"

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        unet = self.sd.unet
        if cfg.largen.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        net = LarGenNet(unet, build_assign(cfg, unet).to(device).train())
        self.trainable = {"largen": net}

    def optimizers(self) -> list[OptimizerSpec]:
        scale = {"largen.unet": float(self.cfg.largen.unet_lr_scale)}
        return [OptimizerSpec("largen", ["largen.unet", "largen.assign"], self.cfg.optim, lr_scale=scale)]

    def _modules(self) -> tuple[LarGenNet, None]:
        return unwrap(self.trainable["largen"]), None

    def training_step(self, batch: dict, step: int) -> StepOutput:
        x = self._frozen_inputs(batch)
        noise, t, noisy = self._noised(x["latents"])
        eps = self.trainable["largen"](unet_input(noisy, x["mask_latent"], x["masked"]), t, x["text"], x["penultimate"],
                                       added_cond_kwargs=x["added"])
        loss = F.mse_loss(eps.float(), noise.float())
        return StepOutput({"largen": loss}, {"subject_kept": float(x["keep"].mean())})

    def final_modules(self) -> dict:
        net = unwrap(self.trainable["largen"])
        return {"unet": net.unet, "assign": net.assign}


class RefineStage(LarGenStage):
    """Stage B: the RefineNet (+ detail encoder) against the frozen stage-A UNet and adapter."""

    name = "largen_refine"
    refine_trains = True

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        super().check_config(cfg)
        for key in ("unet", "assign"):
            if is_given(cfg.largen.get(key)):
                continue
            if not is_tiny(cfg):
                raise ConfigError(f"largen.{key}", f"stage B needs stage A's final/{key} folder")
            log.warning("largen.%s not set: stage B starts from a RANDOM tiny stage A (demo models only; give "
                        "largen.%s=<stage A run>/final/%s to refine a trained one)", key, key, key)

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        self.check_config(cfg)
        super().__init__(cfg, device, weight_dtype)
        unet = self.sd.unet
        self.net = LarGenNet(unet, build_assign(cfg, unet).to(device)).requires_grad_(False).eval()
        refine = build_refine(cfg, unet, required=True).to(device).train()
        if cfg.largen.gradient_checkpointing:
            refine.enable_gradient_checkpointing()
            unet.enable_gradient_checkpointing()
        self.trainable = {"refine": refine}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("refine", ["refine"], self.cfg.optim)]

    def _modules(self) -> tuple[LarGenNet, object]:
        return self.net, unwrap(self.trainable["refine"])

    def training_step(self, batch: dict, step: int) -> StepOutput:
        x = self._frozen_inputs(batch)
        noise, t, noisy = self._noised(x["latents"])
        with torch.no_grad():
            subject_latents = encode_latents(self.sd.vae, batch["subject"])
            added = refine_conditions(self.parts, subject_latents.shape[0], batch["image"].shape[-2:])
        subject_noise = torch.randn(subject_latents.shape, device=subject_latents.device, dtype=subject_latents.dtype)
        bank = self.trainable["refine"](self.sd.scheduler.add_noise(subject_latents, subject_noise, t), t, x["last"],
                                        added)
        eps = self.net(unet_input(noisy, x["mask_latent"], x["masked"]), t, x["text"], x["penultimate"],
                       reference_bank=bank, reference_keep=x["keep"], added_cond_kwargs=x["added"])
        loss = F.mse_loss(eps.float(), noise.float())
        return StepOutput({"refine": loss}, {"subject_kept": float(x["keep"].mean())})


def stage_class(cfg: DictConfig) -> type[LarGenStage]:
    LarGenStage.check_config(cfg)
    return AssignStage if str(cfg.largen.stage) == "assign" else RefineStage


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_largen.py largen.stage=assign|refine``."""
    return fit(cfg, stage_class(cfg), run_dir)
