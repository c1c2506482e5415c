"""Every method's pipeline from one config (``cfg.method.name``): what ``eval.py`` generates with and what the app
runs, so the two can never build a method differently."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

# method name -> what a person calls it (configs/method/<name>.yaml)
METHOD_LABELS = {"asuka": "ASUKA (SD-1.5)", "sd": "SD-1.5 inpainting", "asuka_flux": "ASUKA-FLUX",
                 "flux_fill": "FLUX.1-Fill", "largen": "LAR-Gen"}
FLUX_METHODS = ("asuka_flux", "flux_fill")


def build_method_pipeline(cfg: DictConfig, device: torch.device) -> Any:
    """The pipeline of ``cfg.method.name`` on ``device``, frozen, progress bars as configured by the caller.

    ``asuka``: the exported folder (``paths.pipeline``) or the trained stages; ``asuka_flux`` / ``flux_fill``: the
    FLUX.1-Fill model of the selected size class (placed or CPU-offloaded by their builder); ``largen``:
    :func:`asuka.pipelines.largen_build.build_largen_pipeline`; any other name: an SD-1.5 inpainting baseline with
    the method's prompt.
    """
    method = cfg.method.name
    if method == "flux_fill":
        from asuka.pipelines.build_flux import build_flux_pipeline, with_flux_model

        return build_flux_pipeline(with_flux_model(cfg), device=device, baseline=True)
    if method == "largen":
        from asuka.pipelines.largen_build import build_largen_pipeline

        return build_largen_pipeline(cfg, device)
    if method in ("asuka", "asuka_flux"):
        from asuka.pipelines.build import build_pipeline
        from asuka.pipelines.build_flux import with_flux_model

        pipe = build_pipeline(with_flux_model(cfg) if method == "asuka_flux" else cfg, device=device)
        return pipe if method == "asuka_flux" else pipe.to(device)
    from asuka.pipelines.baselines import load_sd_baseline

    # half precision is for GPUs; on the CPU the baseline runs in float32 whatever model.sd.dtype says
    dtype = torch.float32 if device.type == "cpu" else None
    pipe = load_sd_baseline(cfg.paths.sd_inpaint, prompt=str(cfg.method.get("prompt", "")), device=device,
                            dtype=dtype, sd_cfg=OmegaConf.select(cfg, "model.sd"))
    return pipe.to(device)


def flux_kwargs(method: str, guidance: float | None, condition_weight: float | None) -> dict[str, float]:
    """The FLUX methods' own knobs (distilled ``guidance``, ASUKA-FLUX's ``condition_weight``) where given; the other
    methods take ``guidance_scale`` (true classifier-free guidance) instead and have no condition weight."""
    if method not in FLUX_METHODS:
        return {}
    given = {"guidance": guidance, "condition_weight": condition_weight if method == "asuka_flux" else None}
    return {key: float(value) for key, value in given.items() if value is not None}
