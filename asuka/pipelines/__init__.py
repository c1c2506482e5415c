"""Inference: the ASUKA inpainting pipelines (diffusers-style; SD-1.5, SDXL and FLUX.1-Fill), LAR-Gen and the
baselines used in evaluation."""
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline

__all__ = ["AsukaFluxFillPipeline", "AsukaInpaintPipeline", "LarGenInpaintPipeline"]
