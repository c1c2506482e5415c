"""Inference: the ASUKA inpainting pipelines (diffusers-style; SD-1.5, SDXL and FLUX.1-Fill), LAR-Gen and the
baselines used in evaluation."""
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline
from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline
from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline

__all__ = ["AsukaFluxFillPipeline", "AsukaInpaintPipeline", "LarGenInpaintPipeline"]

# diffusers' DiffusionPipeline.from_pretrained(folder) looks the class named in model_index.json up in the diffusers
# namespace; naming ours there makes that habit work on an exported folder once asuka.pipelines is imported.
import diffusers  # noqa: E402

for _cls in (AsukaFluxFillPipeline, AsukaInpaintPipeline, LarGenInpaintPipeline):
    setattr(diffusers, _cls.__name__, _cls)
del _cls
