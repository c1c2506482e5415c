"""What every frozen inpainting backbone tells the rest of the package (the MAE, stages, pipelines, eval, scripts).

A backbone is a small stateless object: it knows how to load its frozen parts, the VAE's latent convention, the
shapes of the conditions the aligned prior must take, the inpainting input it builds from an image and a mask, the
noise/target pair of its training objective and its inference scheduler. Callers ask it; they never branch on its
name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class ConditionShapes:
    """The conditions the aligned prior replaces: ``tokens [B, L, token_dim]`` and, when the backbone has one, a
    pooled vector ``[B, pooled_dim]``."""

    token_dim: int
    pooled_dim: int | None = None


class Backbone:
    """Interface; see :mod:`asuka.models.backbones.sd15` and :mod:`asuka.models.backbones.flux`."""

    name: ClassVar[str]
    config_key: ClassVar[str]     # the model.<key> block with source/dtype/seed
    paths_key: ClassVar[str]      # the paths.<key> of the frozen weights
    pixel_multiple: ClassVar[int]  # input sizes are rounded down to a multiple of this

    def load(self, block: Any, path: Any, device: str | torch.device = "cpu", dtype: Any = None,
             parts: tuple[str, ...] | None = None) -> Any:
        raise NotImplementedError

    def condition_shapes(self, components: Any) -> ConditionShapes:
        raise NotImplementedError

    def inference_scheduler(self, components: Any) -> Any:
        raise NotImplementedError

    def inpaint_input(self, components: Any, noisy_latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                      generator: Any = None) -> torch.Tensor:
        """The generator's input: the noisy latents with the inpainting condition built from ``image``/``mask``."""
        raise NotImplementedError

    def noisy_input_and_target(self, components: Any, x0: torch.Tensor, noise: torch.Tensor,
                               t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training objective: the noised latents at ``t`` and what the model must predict."""
        raise NotImplementedError

    # ---------------------------------------------------------------- training against the frozen backbone (stage 2)
    # The alignment heads the backbone's conditions come from: ``model.<name>`` block -> subfolder of a converted
    # released ``paths.alignment_init`` folder ("." = the folder itself).
    alignment_heads: ClassVar[dict[str, str]] = {"alignment": "."}
    gradient_checkpointing_default: ClassVar[bool] = False  # align.gradient_checkpointing=auto
    has_null_conditions: ClassVar[bool] = False             # stored "null" conditions the prior is blended with
    align_latent_cache: ClassVar[bool] = False               # paths.align_latents (stage-2 VAE-moment cache)

    def denoiser(self, components: Any) -> torch.nn.Module:
        """The frozen network the conditions feed (UNet, transformer)."""
        raise NotImplementedError

    def training_inputs(self, components: Any, image: torch.Tensor, mask: torch.Tensor,
                        latents: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Frozen inputs of a training step (no grad): ``x0`` and the inpainting condition of ``image``/``mask``;
        ``latents`` = precomputed ``(image latents, masked-image latents)`` where the backbone has such a cache."""
        raise NotImplementedError

    def head_conditions(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The backbone's conditions from the alignment heads' outputs (keyed like ``alignment_heads``)."""
        raise NotImplementedError

    def training_prediction(self, components: Any, denoiser: torch.nn.Module, inputs: dict[str, torch.Tensor],
                            conditions: tuple[torch.Tensor, ...], options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw noise and a time, run ``denoiser`` (the frozen network, maybe compiled) and return
        ``(prediction, target)`` of the training objective; ``options`` is ``cfg.align``."""
        raise NotImplementedError
