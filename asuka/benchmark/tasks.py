"""The benchmark tasks: inference overhead of ASUKA over SD-inpainting, training-step throughput and MFU of the three
stages, and mask-generator speed.

Each task measures the package's real code path, not a re-implementation of it: the inference task calls
``AsukaInpaintPipeline`` and diffusers' ``StableDiffusionInpaintPipeline`` on the same UNet, VAE and scheduler; the
training tasks build the real stage (``MaeStage``, ``AlignStage``, ``DecoderStage``) from the composed stage config
and time its ``training_step`` plus the optimizer update the engine does. Only the weight loaders are replaced, by
random weights of the same architecture (``model=sd15``), so nothing is downloaded.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from asuka.benchmark.common import TASKS, BenchEnv, resolve_env
from asuka.utils.errors import ConfigError

__all__ = ["TASKS", "BenchEnv", "resolve_env", "run_task"]


def run_task(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Dispatch to the task function; returns its figures."""
    if env.task in ("masks", "data"):  # no model: start without importing diffusers and the model packages
        from asuka.benchmark.data import data
        from asuka.benchmark.masks import masks

        return {"masks": masks, "data": data}[env.task](cfg, env)
    from asuka.benchmark import flux

    if env.model in flux.FLUX_MODELS:
        if env.task == "train_align":
            from asuka.benchmark.flux_train import train_align_flux

            return train_align_flux(cfg, env)
        if env.task != "inference":
            raise ConfigError("model", f"{env.model}: no {env.task} benchmark (FLUX has the inference benchmark and "
                                       "task=train_align)")
        return flux.inference(cfg, env)
    if env.task == "largen_data":
        from asuka.benchmark.largen_data import largen_data

        return largen_data(cfg, env)
    if env.task == "inference":
        from asuka.benchmark.inference import inference

        return inference(cfg, env)
    from asuka.benchmark.training import train_task

    return train_task(cfg, env)
