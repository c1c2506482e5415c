"""ASUKA on SDXL inpainting (model=sdxl_tiny): the two heads' conditions drive the same AsukaInpaintPipeline, whose
sampling equals diffusers' StableDiffusionXLInpaintPipeline given those conditions as prompt embeddings; stage 2
trains both heads through the script, and the trained heads export and load back into the pipeline."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import torch
from conftest import REPO, compose_config
from diffusers import StableDiffusionXLInpaintPipeline

from asuka.models.backbones.sdxl import build_tiny_sdxl
from asuka.pipelines.build import build_pipeline, export_pipeline, load_pipeline


def _inputs() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[8:24, 16:40] = 255
    return image, PIL.Image.fromarray(mask)


def test_asuka_sdxl_samples_as_diffusers_sdxl_inpainting():
    pipe = build_pipeline(compose_config("inpaint", ["model=sdxl_tiny"]))
    assert pipe.alignment_clip is not None and pipe.vae.config.scaling_factor == 0.13025
    pipe.set_progress_bar_config(disable=True)
    image, mask = _inputs()
    init, m = pipe.preprocess(image, mask)
    tokens, pooled = pipe.conditions_from_tensors(init, m)
    assert tokens.shape == (1, 16, 32) and pooled.shape == (1, 16)
    run = dict(num_inference_steps=3, output_type="latent")
    ours = pipe(image, mask, generator=torch.Generator().manual_seed(0), **run).images
    given = pipe(image, mask, prior_embeds=tokens, pooled_prior_embeds=pooled,
                 generator=torch.Generator().manual_seed(0), **run).images
    assert torch.equal(ours, given)
    tiny = build_tiny_sdxl(0)
    ref = StableDiffusionXLInpaintPipeline(
        vae=pipe.vae, unet=pipe.unet, scheduler=pipe.scheduler, text_encoder=tiny.text_encoder,
        text_encoder_2=tiny.text_encoder_2, tokenizer=None, tokenizer_2=None, requires_aesthetics_score=False)
    ref.set_progress_bar_config(disable=True)
    want = ref(image=image, mask_image=mask, prompt_embeds=tokens, pooled_prompt_embeds=pooled, guidance_scale=1.0,
               strength=1.0, height=32, width=48, generator=torch.Generator().manual_seed(0), **run).images
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    cfg = pipe(image, mask, guidance_scale=3.0, generator=torch.Generator().manual_seed(0), **run).images
    assert not torch.allclose(cfg, ours)  # the null branch (both heads on a fully masked prior) is used


def test_sdxl_stage2_heads_export_into_the_pipeline(tmp_path):
    run = tmp_path / "align"
    cmd = [sys.executable, str(REPO / "scripts/train_align.py"), "experiment=demo", "model=sdxl_tiny",
           "trainer.batch_size=2", "trainer.max_steps=2", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = export_pipeline(compose_config("export_pipeline", [
        "model=sdxl_tiny", f"alignment={run / 'final/alignment'}", "decoder=null", f"out={tmp_path / 'pipe'}"]))
    pipe = load_pipeline(out)
    for name in ("alignment", "alignment_clip"):
        trained = type(getattr(pipe, name)).from_pretrained(str(run / "final" / name)).state_dict()
        ours = getattr(pipe, name).state_dict()
        assert ours.keys() == trained.keys() and all(torch.equal(ours[k], trained[k]) for k in trained), name
    image, mask = _inputs()
    result = pipe(image, mask, num_inference_steps=1, output_type="np").images
    assert result.shape == (1, 32, 48, 3) and np.isfinite(result).all()
