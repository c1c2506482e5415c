"""Inference: the ASUKA inpainting pipelines (diffusers-style; SD-1.5 and FLUX.1-Fill) and the baselines used in
evaluation."""
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

__all__ = ["AsukaFluxFillPipeline", "AsukaInpaintPipeline"]
