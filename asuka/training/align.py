"""Stage 2: train the alignment module against the frozen inpainting backbone (paper 3.2).

The frozen MAE gives the prior of the masked image; with probability p it gives the prior of the whole (unmasked)
image instead, the MAE's "reconstructed prior", with p decaying linearly from 1.0 to 0.1 over the first 2,000 steps
(official issue #1). Only the alignment heads train. The backbone (``model.backbone``) says what the heads are, what
its frozen inputs and objective are: SD-1.5's epsilon loss with one head; FLUX.1-Fill's flow matching with a T5-width
token head and a pooled CLIP-width head, blended with its null conditions (and dropped to them) as configured.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset

from asuka.data.datasets import build_train_dataset
from asuka.models.alignment import AlignmentModule
from asuka.models.backbones import backbone_for
from asuka.models.mae_import import load_frozen_mae
from asuka.training.align_latents import CachedAlignDataset, open_align_latents, sample_cached_latents
from asuka.training.conditions import blend_with_null, check_null_conditions, load_null_conditions
from asuka.training.engine import fit
from asuka.training.modules import unwrap
from asuka.training.stage import OptimizerSpec, Stage, StepOutput, Validation
from asuka.utils.errors import AsukaError, ConfigError


def reconstructed_prior_prob(step: int, p_start: float, p_end: float, decay_steps: int) -> float:
    """p at optimizer step ``step``: linear from ``p_start`` to ``p_end`` over ``decay_steps``, then fixed."""
    if decay_steps <= 0 or step >= decay_steps:
        return p_end
    return p_start + (p_end - p_start) * step / decay_steps


class AlignStage(Stage):
    name = "alignment"

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        backbone = backbone_for(cfg.model)
        if cfg.paths.get("align_latents") and not backbone.align_latent_cache:
            raise ConfigError("paths.align_latents", f"the stage-2 latent cache is not available for {backbone.name}")
        checkpointing = str(cfg.align.get("gradient_checkpointing", False)).lower()
        if checkpointing not in ("auto", "true", "false"):
            raise ConfigError("align.gradient_checkpointing", f"must be auto, true or false, got {checkpointing}")
        if not 0.0 <= float(cfg.align.get("condition_dropout", 0.0)) <= 1.0:
            raise ConfigError("align.condition_dropout", "must be in [0, 1]")
        check_null_conditions(cfg, backbone, cfg.align.get("null_conditions", "released"), "align.null_conditions")

    def __init__(self, cfg: DictConfig, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().__init__(cfg, device, weight_dtype)
        self.check_config(cfg)
        self._dataset = build_train_dataset(cfg)
        if cfg.paths.get("align_latents"):  # precomputed VAE latents; checked before any model loads
            self._dataset = CachedAlignDataset(self._dataset, open_align_latents(cfg, self._dataset))
        self.backbone = backbone_for(cfg.model)
        frozen_dtype = weight_dtype if cfg.align.cast_frozen else torch.float32
        self.frozen = self.backbone.load(cfg.model[self.backbone.config_key],
                                         cfg.paths.get(self.backbone.paths_key), device, frozen_dtype)
        net = self.backbone.denoiser(self.frozen)
        checkpointing = str(cfg.align.gradient_checkpointing).lower()
        if checkpointing == "true" or (checkpointing == "auto" and self.backbone.gradient_checkpointing_default):
            net.enable_gradient_checkpointing()
        if cfg.align.channels_last:
            net.to(memory_format=torch.channels_last)
            self.frozen.vae.to(memory_format=torch.channels_last)
        self.denoiser = torch.compile(net) if cfg.align.compile_unet else net
        self.mae = load_frozen_mae(cfg).to(device)
        self.trainable = {name: self._head(name).to(device).train() for name in self.backbone.alignment_heads}
        null = load_null_conditions(cfg, self.backbone, self.frozen, cfg.align.get("null_conditions", "released"),
                                    "align.null_conditions")
        self.null = None if null is None else tuple(n.to(device) for n in null)

    def frozen_modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.backbone.denoiser(self.frozen)}

    @property
    def sd(self):  # noqa: ANN201
        """The frozen backbone's components (``unet``/``transformer``, ``vae``, ``scheduler``)."""
        return self.frozen

    def _head(self, name: str) -> AlignmentModule:
        """Head ``name`` from ``model.<name>``, or from ``paths.alignment_init`` (a stage-2 result, or the converted
        released folder: ``alignment/t5`` and ``alignment/clip`` for FLUX) to fine-tune released weights."""
        init = self.cfg.paths.get("alignment_init")
        if init in (None, "", "null"):
            head = AlignmentModule(**self.cfg.model[name])
        else:
            folder = Path(str(init)).expanduser() / self.backbone.alignment_heads[name]
            if not (folder / "config.json").is_file():
                raise AsukaError(f"{folder}: no alignment head '{name}' here (paths.alignment_init: a final/ "
                                 "alignment folder, or for FLUX the converted alignment/ folder with t5/ and clip/)")
            head = AlignmentModule.from_pretrained(str(folder))
        widths = self.backbone.condition_shapes(self.frozen)
        want = widths.token_dim if name == "alignment" else widths.pooled_dim
        if int(head.config.out_dim) != int(want):
            raise ConfigError(f"model.{name}.out_dim", f"is {head.config.out_dim}; the frozen backbone takes {want}")
        return head

    def train_dataset(self) -> Dataset:
        return self._dataset

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("alignment", list(self.trainable), self.cfg.optim)]

    def prior_prob(self, step: int) -> float:
        p = self.cfg.align.reconstructed_prior
        return reconstructed_prior_prob(step, float(p.p_start), float(p.p_end), int(p.decay_steps))

    @torch.no_grad()
    def _frozen_inputs(self, batch: dict, step: int) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """Everything the frozen MAE and the backbone's VAE contribute to a step: prior, the backbone's training
        inputs (latents drawn from the batch's cached ``"moments"`` when training reads ``paths.align_latents``)."""
        image, mask = batch["image"], batch["mask"]
        swap = torch.rand(image.shape[0], device=image.device) < self.prior_prob(step)
        prior_mask = mask * (~swap).to(mask.dtype)[:, None, None, None]  # swapped samples: nothing masked
        prior = self.mae.prior(image.float(), prior_mask.float())
        cached = None
        if "moments" in batch:
            cached = sample_cached_latents(batch["moments"], self.frozen.vae.config.scaling_factor)
        inputs = self.backbone.training_inputs(self.frozen, image, mask, cached)
        return prior, inputs, swap.float().mean()

    def training_step(self, batch: dict, step: int) -> StepOutput:
        prior, inputs, swapped = self._frozen_inputs(batch, step)
        outputs = {name: head(prior) for name, head in self.trainable.items()}
        conditions = blend_with_null(self.backbone.head_conditions(outputs), self.null,
                                     float(self.cfg.align.get("condition_dropout", 0.0)),
                                     float(self.cfg.align.get("condition_weight", 1.0)))
        prediction, target = self.backbone.training_prediction(self.frozen, self.denoiser, inputs, conditions,
                                                               self.cfg.align)
        loss = F.mse_loss(prediction.float(), target.float())
        return StepOutput({"alignment": loss}, {"p_reconstructed": self.prior_prob(step), "swapped": swapped})

    def validate(self, batch: dict) -> Validation:
        """Image, masked image, and the inpainting the current heads give (the backbone's pipeline; SD: DDIM, no
        CFG; FLUX: its Euler sampler, distilled guidance, the pipeline's null blend)."""
        image, mask = batch["image"], batch["mask"]
        pipe = VALIDATION_PIPELINES[self.backbone.name](self)
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


def _sd_pipeline(stage: AlignStage):  # noqa: ANN202
    from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

    clip = stage.trainable.get("alignment_clip")  # SDXL's pooled head
    return AsukaInpaintPipeline(vae=stage.frozen.vae, unet=stage.frozen.unet,
                                scheduler=stage.backbone.inference_scheduler(stage.frozen), mae=stage.mae,
                                alignment=unwrap(stage.trainable["alignment"]), decoder=None,
                                alignment_clip=None if clip is None else unwrap(clip))


def _flux_pipeline(stage: AlignStage):  # noqa: ANN202
    from asuka.models.backbones.flux import FluxConditions
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline

    return AsukaFluxFillPipeline(transformer=stage.frozen.transformer, vae=stage.frozen.vae,
                                 scheduler=stage.backbone.inference_scheduler(stage.frozen),
                                 conditions=FluxConditions.from_tensors(*stage.null).to(stage.device), mae=stage.mae,
                                 alignment=unwrap(stage.trainable["alignment"]),
                                 alignment_clip=unwrap(stage.trainable["alignment_clip"]), decoder=None)


# The validation pipeline of each backbone (model.backbone), built around the stage's frozen parts and heads.
VALIDATION_PIPELINES = {"sd15_inpaint": _sd_pipeline, "flux_fill": _flux_pipeline, "sdxl": _sd_pipeline}


def train(cfg: DictConfig, run_dir: str | None = None) -> dict:
    """``python scripts/train_align.py``: stage 2 on the shared engine."""
    return fit(cfg, AlignStage, run_dir)
