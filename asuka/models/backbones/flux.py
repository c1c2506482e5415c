"""FLUX.1-Fill-dev as a backbone: loading, the 16-channel AE's latent convention, the packed 320-channel fill
condition, the rectified-flow objective and the dynamic-shift Euler schedule.

Formulas follow BFL's ``flux/sampling.py`` as used by the released ASUKA-FLUX (``asuka-flux/test_asuka_flux.py``),
which diffusers' ``FluxFillPipeline`` reproduces; packing and position ids reuse that pipeline's static helpers.
The functions here are the one definition that the pipeline and (later) the training stage both call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.flux.pipeline_flux_fill import FluxFillPipeline, calculate_shift, retrieve_timesteps
from torch import nn

from asuka.models.backbones.base import Backbone, ConditionShapes
from asuka.models.frozen import FrozenModelSpec, load_frozen
from asuka.models.sd import sample_latents, vae_scale_factor
from asuka.utils.config import cfg_get
from asuka.utils.errors import ConfigError

# scheduler/scheduler_config.json of black-forest-labs/FLUX.1-Fill-dev (mu linear in the token count: 256 -> 0.5,
# 4096 -> 1.15, as BFL's get_schedule(shift=True)).
FLUX_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
FLUX_SUBFOLDERS = ("transformer", "vae", "scheduler")
GUIDANCE = 30.0             # FLUX.1-Fill's distilled guidance (official test_asuka_flux.py: guidance=30.)
NUM_STEPS = 50              # official: get_schedule(50, ...)
PACK = 2                    # latents are packed in 2x2 patches


@dataclass
class FluxComponents:
    """The frozen parts of FLUX.1-Fill-dev that ASUKA uses (no T5, no CLIP text encoder)."""

    transformer: FluxTransformer2DModel | None
    vae: AutoencoderKL | None
    scheduler: FlowMatchEulerDiscreteScheduler | None


class FluxConditions(ModelMixin, ConfigMixin):
    """Stored FLUX conditions ``txt [1, L, D]`` and ``vec [1, P]``.

    ASUKA-FLUX keeps the "null" pair (``txt_256.pt``, ``vec.pt``) that the aligned prior is blended with
    (``null + w * (c - null)``); the FLUX.1-Fill-dev baseline keeps the stored prompt embedding (``txt.pt``,
    ``vec.pt``) it is run with. Saved with the pipeline like any other component.
    """

    @register_to_config
    def __init__(self, txt_tokens: int = 256, txt_dim: int = 4096, vec_dim: int = 768) -> None:
        super().__init__()
        self.txt = nn.Parameter(torch.zeros(1, txt_tokens, txt_dim), requires_grad=False)
        self.vec = nn.Parameter(torch.zeros(1, vec_dim), requires_grad=False)

    @classmethod
    def from_tensors(cls, txt: torch.Tensor, vec: torch.Tensor) -> "FluxConditions":
        """From the released tensors (any leading shape that flattens to ``[1, L, D]`` / ``[1, P]``)."""
        txt = txt.detach().float().reshape(1, txt.shape[-2], txt.shape[-1])
        vec = vec.detach().float().reshape(1, vec.shape[-1])
        out = cls(txt_tokens=txt.shape[1], txt_dim=txt.shape[2], vec_dim=vec.shape[1])
        with torch.no_grad():
            out.txt.copy_(txt)
            out.vec.copy_(vec)
        return out.eval()


def build_tiny_flux(seed: int = 0) -> FluxComponents:
    """Small random FLUX.1-Fill components (384-channel fill input, 16-channel AE with FLUX's scale/shift, FLUX's
    schedule) for tests and the demo; each part is built after ``manual_seed(seed)`` in a forked RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=384, out_channels=64, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=24,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        )
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 16, 16), layers_per_block=1,
            latent_channels=16, norm_num_groups=8, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False,
        )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG)
    return FluxComponents(transformer=transformer, vae=vae, scheduler=scheduler)


FLUX_SPEC = FrozenModelSpec(
    name="FLUX.1-Fill", block="model.flux", paths_key="paths.flux_fill",
    classes={"transformer": FluxTransformer2DModel, "vae": AutoencoderKL, "scheduler": FlowMatchEulerDiscreteScheduler},
    components=FluxComponents, build_tiny=build_tiny_flux,
    in_channels=("transformer", 384, "FLUX.1-Fill has 384 (64 noisy + 320 fill condition)"),
    hub_note="; FLUX.1-Fill-dev is gated: log in to download it",
)


def load_flux_fill(
    flux_cfg: Any,
    path: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    parts: tuple[str, ...] = FLUX_SUBFOLDERS,
) -> FluxComponents:
    """The frozen FLUX.1-Fill transformer, AE and scheduler (``model.flux`` block: ``source: pretrained | tiny``).

    ``pretrained`` reads ``path``: a local diffusers folder, or a hub id, read from the local hub cache when
    ``HF_HUB_OFFLINE`` is set and otherwise downloaded by diffusers with a log line saying so (FLUX.1-Fill-dev is
    gated: log in first). ``dtype`` (default ``model.flux.dtype``) applies to the transformer and the AE; both come
    back frozen, in eval mode, on ``device``. ``parts`` limits what is read; the others are None.
    """
    return load_frozen(FLUX_SPEC, flux_cfg, path, device, dtype, parts)


# ------------------------------------------------------------------------------------------------ latents


def to_model_space(vae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Raw AE latents -> the transformer's space ``(z - shift) * scale``."""
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def to_ae_space(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """The transformer's latents -> raw AE latents ``x / scale + shift`` (what the AE or ASUKA decoder decodes)."""
    return x / vae.config.scaling_factor + vae.config.shift_factor


def encode_latents(vae: AutoencoderKL, image: torch.Tensor, generator: Any = None,
                   sample_mode: str = "sample") -> torch.Tensor:
    """``image [B,3,H,W]`` in [-1,1] -> ``(E(x) - shift) * scale`` ``[B,16,H/8,W/8]`` (posterior sample)."""
    z = sample_latents(vae, image.to(device=vae.device, dtype=vae.dtype), generator, sample_mode)
    return to_model_space(vae, z)


def latent_grid(vae: AutoencoderKL, height: int, width: int) -> tuple[int, int]:
    """Latent rows/cols of an image, even so that 2x2 packing works (pixels: multiples of 16)."""
    factor = vae_scale_factor(vae) * PACK
    return PACK * (int(height) // factor), PACK * (int(width) // factor)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B,C,h,w]`` -> ``[B, h/2 * w/2, 4C]`` (2x2 patches, BFL's rearrange)."""
    b, c, h, w = latents.shape
    return FluxFillPipeline._pack_latents(latents, b, c, h, w)


def unpack(packed: torch.Tensor, height: int, width: int, vae: AutoencoderKL) -> torch.Tensor:
    """Inverse of :func:`pack` for an image of ``height x width`` pixels."""
    return FluxFillPipeline._unpack_latents(packed, height, width, vae_scale_factor(vae))


def pack_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """``mask [B,1,H,W]`` -> ``[B, N, 4 factor^2]``: each ``factor x factor`` pixel block becomes channels, then
    2x2 packing (BFL: ``b (h ph) (w pw) -> b (ph pw) h w`` with ph = pw = 8, then pack)."""
    b, _, height, width = mask.shape
    h, w = height // factor, width // factor
    m = mask[:, 0].reshape(b, h, factor, w, factor).permute(0, 2, 4, 1, 3).reshape(b, factor * factor, h, w)
    return pack(m)


def fill_condition(vae: AutoencoderKL, image: torch.Tensor, mask: torch.Tensor, generator: Any = None,
                   sample_mode: str = "sample") -> torch.Tensor:
    """FLUX.1-Fill's image condition ``[B, N, 320]``: packed latents of ``image * (1 - mask)`` (64) and the packed
    pixel mask (256). ``image`` in [-1,1] and ``mask`` (1 = hole) at a size that is a multiple of 16."""
    factor = vae_scale_factor(vae)
    if image.shape[-1] % (factor * PACK) or image.shape[-2] % (factor * PACK):
        raise ValueError(f"image sides must be multiples of {factor * PACK}, got {tuple(image.shape[-2:])}")
    latents = pack(encode_latents(vae, image * (1 - mask), generator, sample_mode))
    return torch.cat([latents, pack_mask(mask.to(latents), factor)], dim=-1)


def image_ids(vae: AutoencoderKL, height: int, width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Position ids ``[N, 3]`` of the packed image tokens (row, column)."""
    h, w = latent_grid(vae, height, width)
    return FluxFillPipeline._prepare_latent_image_ids(None, h // PACK, w // PACK, device, dtype)


def text_ids(tokens: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """Position ids ``[L, 3]`` of the condition tokens: zeros (no RoPE offset), as BFL and diffusers."""
    return torch.zeros(tokens, 3, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ sampling


def inference_timesteps(scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int, image_seq_len: int,
                        device: Any) -> torch.Tensor:
    """Sigmas ``linspace(1, 1/n, n)`` time-shifted with ``mu`` linear in the token count (BFL get_schedule with
    shift=True); sets the scheduler and returns its timesteps (sigma * 1000)."""
    cfg = scheduler.config
    mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
    timesteps, _ = retrieve_timesteps(scheduler, num_steps, device, sigmas=sigmas, mu=mu)
    return timesteps


def predict(transformer: FluxTransformer2DModel, latents: torch.Tensor, fill: torch.Tensor, timestep: torch.Tensor,
            txt: torch.Tensor, vec: torch.Tensor, img_ids: torch.Tensor, guidance: float = GUIDANCE) -> torch.Tensor:
    """The transformer's velocity for packed ``latents [B,N,64]`` with the fill condition ``[B,N,320]``, conditions
    ``txt [B,L,D]`` / ``vec [B,P]``, ``timestep`` = sigma * 1000 ``[B]`` and the distilled guidance value."""
    b = latents.shape[0]
    g = torch.full([b], float(guidance), device=latents.device, dtype=torch.float32)
    return transformer(
        hidden_states=torch.cat([latents, fill.to(latents.dtype)], dim=2),
        timestep=timestep.to(latents.dtype) / 1000,
        guidance=g if transformer.config.guidance_embeds else None,
        pooled_projections=vec.to(latents.dtype),
        encoder_hidden_states=txt.to(latents.dtype),
        txt_ids=text_ids(txt.shape[1], latents.device, latents.dtype),
        img_ids=img_ids,
        return_dict=False,
    )[0]


def flow_matching_pair(x0: torch.Tensor, noise: torch.Tensor,
                       sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow (diffusers' FLUX training): ``x_sigma = (1 - sigma) x0 + sigma noise`` and the velocity target
    ``noise - x0``; ``sigma [B]`` in [0, 1]."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - s) * x0 + s * noise, noise - x0


class FluxFill(Backbone):
    """Frozen FLUX.1-Fill-dev: tokens ``[B, L, 4096]`` + pooled ``[B, 768]``, flow matching, 50 Euler steps."""

    name = "flux_fill"
    config_key = "flux"
    paths_key = "flux_fill"
    pixel_multiple = 16

    def load(self, block: Any, path: Any, device: str | torch.device = "cpu", dtype: Any = None,
             parts: tuple[str, ...] | None = None) -> FluxComponents:
        return load_flux_fill(block, path, device=device, dtype=dtype, parts=parts or FLUX_SUBFOLDERS)

    def condition_shapes(self, components: FluxComponents) -> ConditionShapes:
        cfg = components.transformer.config
        return ConditionShapes(token_dim=int(cfg.joint_attention_dim), pooled_dim=int(cfg.pooled_projection_dim))

    def inference_scheduler(self, components: FluxComponents) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler.from_config(components.scheduler.config)

    def inpaint_input(self, components: FluxComponents, noisy_latents: torch.Tensor, image: torch.Tensor,
                      mask: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The 384-channel transformer input: packed noisy latents (64) + :func:`fill_condition` (320)."""
        fill = fill_condition(components.vae, image, mask, generator)
        return torch.cat([noisy_latents, fill.to(noisy_latents)], dim=2)

    def noisy_input_and_target(self, components: FluxComponents, x0: torch.Tensor, noise: torch.Tensor,
                               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow matching with ``t`` = sigma in [0, 1]: :func:`flow_matching_pair`."""
        return flow_matching_pair(x0, noise, t)

    # ---------------------------------------------------------------- stage 2: alignment by flow matching
    alignment_heads = {"alignment": "t5", "alignment_clip": "clip"}  # the converter's alignment/t5, alignment/clip
    gradient_checkpointing_default = True  # 12B frozen transformer: activations, not weights, fill the card
    has_null_conditions = True

    def denoiser(self, components: FluxComponents) -> nn.Module:
        return components.transformer

    def training_inputs(self, components: FluxComponents, image: torch.Tensor, mask: torch.Tensor,
                        latents: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Packed ``x0 = (E(x) - shift) * scale`` ``[B,N,64]`` (posterior sample), the fill condition ``[B,N,320]``
        and the image position ids."""
        if latents is not None:
            raise ConfigError("paths.align_latents", "the stage-2 latent cache holds SD-VAE moments; not for FLUX")
        vae = components.vae
        x0 = pack(encode_latents(vae, image))
        fill = fill_condition(vae, image, mask)
        ids = image_ids(vae, image.shape[-2], image.shape[-1], x0.device, components.transformer.dtype)
        return {"x0": x0.float(), "fill": fill, "img_ids": ids}

    def head_conditions(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``txt`` = the T5 head's tokens; ``vec`` = the CLIP head's tokens averaged (official)."""
        return outputs["alignment"], outputs["alignment_clip"].mean(dim=1)

    def training_prediction(self, components: FluxComponents, denoiser: nn.Module, inputs: dict[str, torch.Tensor],
                            conditions: tuple[torch.Tensor, ...], options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Rectified flow: noise, then sigma (``options.sigma_sampling``), ``x_sigma`` and the velocity target;
        the transformer runs with the distilled guidance ``options.guidance``."""
        x0 = inputs["x0"]
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        sigma = sample_sigmas(x0.shape[0], options, x0.device)
        noisy, target = self.noisy_input_and_target(components, x0, noise, sigma)
        txt, vec = conditions
        dtype = components.transformer.dtype
        v = predict(denoiser, noisy.to(dtype), inputs["fill"], sigma * 1000, txt, vec, inputs["img_ids"],
                    float(options.guidance))
        return v, target


SIGMA_SAMPLING = ("uniform", "logit_normal")


def sample_sigmas(n: int, options: Any, device: Any) -> torch.Tensor:
    """``[n]`` training sigmas in (0, 1): ``uniform`` u ~ U(0, 1), or ``logit_normal`` sigmoid(N(logit_mean,
    logit_std)) (diffusers' FLUX training options; SD3 paper). The torch global RNG draws them."""
    mode = str(cfg_get(options, "sigma_sampling", "uniform"))
    if mode == "uniform":
        return torch.rand(n, device=device)
    if mode == "logit_normal":
        mean, std = float(cfg_get(options, "logit_mean", 0.0)), float(cfg_get(options, "logit_std", 1.0))
        return torch.sigmoid(torch.randn(n, device=device) * std + mean)
    raise ConfigError("align.sigma_sampling", f"unknown value '{mode}', expected one of {', '.join(SIGMA_SAMPLING)}")


def one_step_estimate(transformer: FluxTransformer2DModel, x0: torch.Tensor, fill: torch.Tensor,
                      sigma: torch.Tensor, noise: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                      img_ids: torch.Tensor, guidance: float = GUIDANCE) -> torch.Tensor:
    """One-step x0 estimate of FLUX.1-Fill (the decoder's latent augmentation): ``x_sigma = (1 - sigma) x0 +
    sigma noise``, ``x0_hat = x_sigma - sigma v(x_sigma, sigma)`` on packed latents; float32 outside the model."""
    x_sigma, _ = flow_matching_pair(x0.float(), noise.float(), sigma)
    v = predict(transformer, x_sigma.to(transformer.dtype), fill, sigma * 1000, txt, vec, img_ids, guidance)
    s = sigma.reshape(-1, 1, 1).float()
    return x_sigma - s * v.float()
