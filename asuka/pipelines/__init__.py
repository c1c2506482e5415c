"""Inference: the ASUKA inpainting pipeline (diffusers-style) and the SD baselines used in evaluation."""
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

__all__ = ["AsukaInpaintPipeline"]
