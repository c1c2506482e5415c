"""AsukaFluxFillPipeline: equivalence with diffusers' FluxFillPipeline, the official formulas (schedule, packing, fill
condition), condition blending, the baseline, save/load round trip and input handling. Tiny random FLUX, fp32."""
from __future__ import annotations

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import compose_config
from diffusers import FluxFillPipeline

from asuka.models.backbones import backbone_for, flux
from asuka.pipelines.build import build_pipeline, load_pipeline
from asuka.pipelines.build_flux import build_flux_pipeline
from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline
from asuka.utils.errors import AsukaError

STEPS = 2


@pytest.fixture(scope="module")
def cfg():
    return compose_config("inpaint", ["model=flux_tiny"])


@pytest.fixture(scope="module")
def pipe(cfg) -> AsukaFluxFillPipeline:
    p = build_pipeline(cfg)
    p.set_progress_bar_config(disable=True)
    return p


def _image(h: int = 64, w: int = 64, seed: int = 0) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mask(h: int = 64, w: int = 64) -> PIL.Image.Image:
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h * 5 // 8, w // 6: w * 3 // 4] = 255
    return PIL.Image.fromarray(m)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_config_selects_the_flux_backbone(cfg, pipe):
    assert backbone_for(cfg.model).name == "flux_fill" and backbone_for({}).name == "sd15_inpaint"
    assert pipe.uses_prior and pipe.decoder is None
    shapes = backbone_for(cfg.model).condition_shapes(flux.FluxComponents(pipe.transformer, pipe.vae, None))
    assert (shapes.token_dim, shapes.pooled_dim) == (32, 24)


def test_equals_diffusers_flux_fill_with_the_aligned_prior(pipe):
    """decoder=None, condition_weight=1: diffusers' FluxFillPipeline fed the aligned prior as prompt embeddings."""
    image, mask = _image(), _mask()
    init, m = pipe.preprocess(image, mask)
    txt, vec = pipe.encode_conditions(init, m, condition_weight=1.0)
    latents = flux.pack(torch.randn(1, 16, 8, 8, generator=_gen(3)))
    ours = pipe(image, mask, num_inference_steps=STEPS, condition_weight=1.0, latents=latents, generator=_gen(5),
                output_type="np", paste_back=False).images
    ref = FluxFillPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=None, tokenizer=None,
                           text_encoder_2=None, tokenizer_2=None, transformer=pipe.transformer)
    ref.set_progress_bar_config(disable=True)
    theirs = ref(image=image, mask_image=mask, prompt_embeds=txt, pooled_prompt_embeds=vec, height=64, width=64,
                 num_inference_steps=STEPS, guidance_scale=30.0, latents=latents, generator=_gen(5),
                 output_type="np").images
    assert ours.shape == theirs.shape == (1, 64, 64, 3)
    assert np.abs(ours - theirs).max() < 1e-4
    assert ours.std() > 1e-3  # not a constant image


def test_schedule_is_the_official_shifted_linspace(pipe):
    """BFL get_schedule(n, seq_len, shift=True): linspace(1, 0, n+1), mu linear in seq_len (256 -> 0.5, 4096 ->
    1.15), t' = e^mu / (e^mu + 1/t - 1)."""
    for n, seq_len in ((50, 1024), (4, 16), (50, 4096)):
        flux.inference_timesteps(pipe.scheduler, n, seq_len, "cpu")
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq_len - 256)
        t = np.linspace(1, 0, n + 1)[:-1]
        official = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        np.testing.assert_allclose(pipe.scheduler.sigmas[:-1].double().numpy(), official, atol=1e-6)
        assert float(pipe.scheduler.sigmas[-1]) == 0.0


def test_fill_condition_layout(pipe):
    """[B, N, 320]: BFL's rearrange 'b c (h 2) (w 2) -> b (h w) (c 2 2)' of the masked-image latents, then the mask
    'b (h 8) (w 8) -> b (8 8) h w' packed the same way; written here with explicit indices."""
    init, m = pipe.preprocess(_image(32, 48), _mask(32, 48))
    fill = flux.fill_condition(pipe.vae, init, m, sample_mode="mode")
    assert fill.shape == (1, (32 // 16) * (48 // 16), 320)
    z = flux.encode_latents(pipe.vae, init * (1 - m), sample_mode="mode")[0]  # [16, 4, 6]
    mask = m[0, 0]
    for row in range(2):
        for col in range(3):
            token = fill[0, row * 3 + col]
            want_lat = torch.stack([z[c, 2 * row + i, 2 * col + j] for c in range(16) for i in range(2)
                                    for j in range(2)])
            torch.testing.assert_close(token[:64], want_lat)
            want_mask = torch.stack([mask[8 * (2 * row + i) + py, 8 * (2 * col + j) + px]
                                     for py in range(8) for px in range(8) for i in range(2) for j in range(2)])
            torch.testing.assert_close(token[64:], want_mask)
    assert float(fill[..., 64:].sum()) == float(m.sum())


def test_conditions_blend_with_the_null_pair(pipe):
    init, m = pipe.preprocess(_image(), _mask())
    txt, vec = pipe.aligned_prior(init, m)
    torch.testing.assert_close(vec, pipe.alignment_clip(pipe.mae.prior(init, m)).mean(dim=1))
    null_txt, null_vec = pipe.conditions.txt, pipe.conditions.vec
    t0, v0 = pipe.encode_conditions(init, m, 0.0)
    torch.testing.assert_close(t0, null_txt.expand_as(t0))
    torch.testing.assert_close(v0, null_vec.expand_as(v0))
    th, vh = pipe.encode_conditions(init, m)  # the pipeline's default: model.condition_weight = 0.5
    torch.testing.assert_close(th, (null_txt + txt) / 2)
    torch.testing.assert_close(vh, (null_vec + vec) / 2)


def test_baseline_uses_the_stored_conditions_and_the_ae(cfg):
    base = build_flux_pipeline(cfg, baseline=True)
    base.set_progress_bar_config(disable=True)
    assert base.mae is None and base.decoder is None and not base.uses_prior
    init, m = base.preprocess(_image(), _mask())
    txt, vec = base.encode_conditions(init, m)
    torch.testing.assert_close(txt[0], base.conditions.txt[0])
    out = base(_image(), _mask(), num_inference_steps=STEPS, generator=_gen(), output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "AsukaFluxFillPipeline" and index["conditions"][1] == "FluxConditions"
    assert (index["condition_weight"], index["guidance"]) == (0.5, 30.0)
    loaded = load_pipeline(tmp_path)
    assert (loaded.config.condition_weight, loaded.config.guidance) == (0.5, 30.0)
    assert isinstance(loaded, AsukaFluxFillPipeline)
    loaded.set_progress_bar_config(disable=True)
    for name in ("transformer", "vae", "conditions", "mae", "alignment", "alignment_clip"):
        a, b = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    run = [p(_image(), _mask(), num_inference_steps=STEPS, generator=_gen(1), output_type="np").images
           for p in (pipe, loaded)]
    assert np.abs(run[0] - run[1]).max() < 1e-5
    half = load_pipeline(tmp_path, dtype="bfloat16")  # backbone read straight into bf16, the ASUKA parts float32
    assert (half.transformer.dtype, half.vae.dtype, half.mae.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)


def test_num_images_per_prompt_and_strength_as_diffusers_flux_fill(pipe):
    """strength < 1 draws as diffusers' FluxFillPipeline (the input's latents, the noise, the masked image's); at
    strength 1 it skips the input's encoding, as the released loop does, so only strength < 1 is compared."""
    image, mask = _image(), _mask()
    init, m = pipe.preprocess(image, mask)
    txt, vec = pipe.encode_conditions(init, m, condition_weight=1.0)
    ref = FluxFillPipeline(scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=None, tokenizer=None,
                           text_encoder_2=None, tokenizer_2=None, transformer=pipe.transformer)
    ref.set_progress_bar_config(disable=True)
    for kw in ({"strength": 0.6}, {"strength": 0.5, "num_images_per_prompt": 2}):
        ours = pipe(image, mask, num_inference_steps=4, condition_weight=1.0, generator=_gen(7), output_type="np",
                    paste_back=False, **kw).images
        theirs = ref(image=image, mask_image=mask, prompt_embeds=txt, pooled_prompt_embeds=vec, height=64, width=64,
                     num_inference_steps=4, guidance_scale=30.0, generator=_gen(7), output_type="np", **kw).images
        assert ours.shape == theirs.shape == (kw.get("num_images_per_prompt", 1), 64, 64, 3)
        assert np.abs(ours - theirs).max() < 1e-4, kw
    copies = pipe(image, mask, num_inference_steps=1, generator=_gen(1), num_images_per_prompt=2,
                  output_type="np").images
    assert copies.shape == (2, 64, 64, 3) and np.abs(copies[0] - copies[1]).max() > 0.05  # each its own noise


def test_input_handling(pipe):
    out = pipe(_image(70, 50), _mask(70, 50), num_inference_steps=1, generator=_gen(), output_type="np").images
    assert out.shape == (1, 70, 50, 3)  # sampled at 64x48 (multiples of 16), given back at the caller's size
    known = np.asarray(_mask(70, 50)) == 0
    np.testing.assert_allclose(out[0][known], (np.asarray(_image(70, 50)) / 255.0)[known], atol=1e-6)  # pasted
    image = _image()
    same = pipe(image, PIL.Image.new("L", (64, 64)), num_inference_steps=1, output_type="np").images
    np.testing.assert_allclose(same[0], np.asarray(image) / 255.0, atol=1e-6)  # empty mask: the input
    pasted = pipe(image, _mask(), num_inference_steps=1, generator=_gen(), output_type="np").images  # the default
    known = np.asarray(_mask()) == 0
    np.testing.assert_allclose(pasted[0][known], (np.asarray(image) / 255.0)[known], atol=1e-6)
    with pytest.raises(AsukaError, match="too small"):
        pipe(_image(8, 8), _mask(8, 8), num_inference_steps=1)
    with pytest.raises(AsukaError, match="guidance_scale"):
        pipe(image, _mask(), num_inference_steps=1, guidance_scale=3.0)


def _converted_folder(cfg, root):
    """A folder in scripts/convert_asuka.py's output layout, with tiny parts: mae/, alignment/{t5,clip}/, decoder/,
    conditions/{txt_256,txt,vec}.safetensors (one tensor each, key = stem)."""
    from safetensors.torch import save_file

    src = build_pipeline(cfg, random_decoder=True)
    for name, sub in (("mae", "mae"), ("alignment", "alignment/t5"), ("alignment_clip", "alignment/clip"),
                      ("decoder", "decoder")):
        getattr(src, name).save_pretrained(root / sub)
    (root / "conditions").mkdir()
    tensors = {"txt_256": torch.randn(1, 16, 32), "txt": torch.randn(1, 20, 32), "vec": torch.randn(1, 24)}
    for stem, tensor in tensors.items():
        save_file({stem: tensor}, str(root / "conditions" / f"{stem}.safetensors"))
    return src, tensors


def test_converted_folder_to_export_inpaint_and_eval(cfg, tmp_path):
    """Converted layout -> export_pipeline.py model=flux_tiny -> inpaint.py -> eval.py method=asuka_flux, and the
    flux_fill baseline from the same folder (the stored prompt, no MAE)."""
    from asuka.eval.run import evaluate
    from asuka.pipelines.build import export_pipeline
    from asuka.pipelines.inpaint_files import inpaint

    src, tensors = _converted_folder(cfg, tmp_path / "asuka-flux")
    out = export_pipeline(compose_config("export_pipeline", [
        "model=flux_tiny", f"paths.asuka_flux={tmp_path / 'asuka-flux'}", f"out={tmp_path / 'pipe'}"]))
    pipe = load_pipeline(out)
    assert isinstance(pipe, AsukaFluxFillPipeline)
    for name in ("mae", "alignment", "alignment_clip", "decoder"):
        a, b = getattr(src, name).state_dict(), getattr(pipe, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(pipe.conditions.txt, tensors["txt_256"]) and torch.equal(pipe.conditions.vec, tensors["vec"])

    _image(48, 40).save(tmp_path / "in.png")
    _mask(48, 40).save(tmp_path / "mask.png")
    inpaint(compose_config("inpaint", [f"pipeline={out}", f"image={tmp_path / 'in.png'}",
                                       f"mask_file={tmp_path / 'mask.png'}", f"out={tmp_path / 'out.png'}", "steps=1",
                                       "trainer.cpu=true"]))
    assert PIL.Image.open(tmp_path / "out.png").size == (40, 48)

    results = evaluate(compose_config("eval", ["experiment=demo", "method=asuka_flux", f"paths.pipeline={out}",
                                               "metrics.cache_dir=null", "num_inference_steps=1", "resolution=32"]),
                       tmp_path / "eval")
    assert results["meta"]["method"] == "asuka_flux" and np.isfinite(results["metrics"]["grad"])

    base = build_flux_pipeline(compose_config("eval", ["model=flux_tiny",
                                                       f"paths.asuka_flux={tmp_path / 'asuka-flux'}"]), baseline=True)
    assert base.mae is None and base.decoder is None
    assert torch.equal(base.conditions.txt, tensors["txt"]) and torch.equal(base.conditions.vec, tensors["vec"])


def test_inference_benchmark_flux_tiny():
    """scripts/benchmark.py task=inference model=flux_tiny: both pipelines on one transformer, a finite ratio."""
    from asuka.benchmark.tasks import resolve_env, run_task

    cfg = compose_config("benchmark", ["bench_model=flux_tiny", "task=inference", "device=cpu", "size=32", "steps=1",
                                       "warmup=0", "repeats=1"])
    result = run_task(cfg, resolve_env(cfg))
    assert result["outputs_finite"] and result["ratio"] > 0
    assert result["tokens"] == {"asuka_flux": 16, "flux_fill": 512}
    with pytest.raises(AsukaError, match="inference benchmark"):
        bad = compose_config("benchmark", ["bench_model=flux_tiny", "task=train_mae", "device=cpu"])
        run_task(bad, resolve_env(bad))


def test_missing_released_parts_fail_before_flux_loads(tmp_path):
    from asuka.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="paths.asuka_flux.*missing mae, alignment, alignment_clip, conditions"):
        build_pipeline(compose_config("export_pipeline", ["model=flux_fill", "paths.flux_fill=/nonexistent"]))
    (tmp_path / "conditions").mkdir()
    with pytest.raises(AsukaError, match="FLUX.1-Fill folder not found"):  # the baseline needs only conditions/
        build_flux_pipeline(compose_config("eval", ["model=flux_fill", "paths.flux_fill=/nonexistent",
                                                    f"paths.asuka_flux={tmp_path}"]), baseline=True)


def test_offload_setting_is_checked(pipe):
    from asuka.pipelines.build_flux import place
    from asuka.utils.errors import ConfigError

    assert place(pipe, "cpu", "model") is pipe  # offloading is for GPUs; on the CPU the pipeline just stays
    with pytest.raises(ConfigError, match="model.flux.offload"):
        place(pipe, "cpu", "disk")
