"""scripts/benchmark.py task=largen_data: per-stage rates on the tiny models, and the real models' FLOPs against
the 2 x parameters x tokens rule."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asuka.benchmark.largen_data import real_models

REPO = Path(__file__).resolve().parents[2]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_largen_data_benchmark_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), "task=largen_data", "model=tiny", "device=cpu",
           "size=64", "repeats=1", "warmup=0", "threads=1", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU-hours" in proc.stdout
    r = json.loads(out.read_text())["results"]
    assert set(r["images_per_s"]) == {"tagger", "detector", "segmenter", "captioner"}
    assert all(v > 0 for v in r["images_per_s"].values())
    assert r["pipeline_images_per_s"] == pytest.approx(1 / sum(1 / v for v in r["images_per_s"].values()))
    assert all(v > 0 for v in r["flops_per_image_timed"].values())

    real, cfg = r["flops_per_image_real"], json.loads(out.read_text())["config"]["largen_data"]
    with torch.device("meta"):
        models = {k: build() for k, build in real_models().items()}
    # transformers' matmuls dominate: FLOPs ~ 2 x parameters x tokens (+ attention scores)
    clip_vision = _params(models["tagger"].vision_model) + _params(models["tagger"].visual_projection)
    assert 1.0 <= real["tagger"] / (2 * clip_vision * 257) < 1.15
    llava, lm = models["captioner"], models["captioner"].model.language_model
    tokens = 576 + cfg["prompt_tokens"]
    rule = 2 * _params(lm) * (tokens + cfg["new_tokens"]) + 2 * _params(llava.model.vision_tower) * 577
    assert 0.95 <= real["captioner"] / (cfg["boxes_per_image"] * rule) < 1.15
    sam_encoder = _params(models["segmenter"].vision_encoder)
    assert 1.0 <= real["segmenter"] / (2 * sam_encoder * 64 * 64) < 1.5  # windowed + global attention on top
    est = r["estimate_1m_images"]
    assert est["gpu_hours"] == pytest.approx(1e6 * sum(real.values()) / (cfg["mfu"] * est["peak_flops"]) / 3600)


def _narrow_models_at_real_input_sizes():
    """The real models' input geometry (CLIP 224/14, Grounding DINO 4 levels, SAM 1024/16, LLaVA 336/14) at tiny
    widths, so the model=sd15 path (real processors, patched loaders) runs on a CPU."""
    import transformers as T

    return {
        "tagger": lambda: T.CLIPModel(T.CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=224, patch_size=14), projection_dim=16)),
        "detector": lambda: T.GroundingDinoForObjectDetection(T.GroundingDinoConfig(
            backbone_config=T.SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=12,
                                         image_size=384, out_features=["stage2", "stage3", "stage4"]),
            text_config=T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            d_model=32, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=10, num_feature_levels=4, encoder_n_points=2,
            decoder_n_points=2, use_timm_backbone=False)),
        "segmenter": lambda: T.SamModel(T.SamConfig(
            vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                               output_channels=16, global_attn_indexes=[1], mlp_dim=32, num_pos_feats=8),
            prompt_encoder_config=dict(hidden_size=16, mask_input_channels=4),
            mask_decoder_config=dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                     iou_head_hidden_dim=16))),
        "captioner": lambda: T.LlavaForConditionalGeneration(T.LlavaConfig(
            vision_config=T.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=336, patch_size=14),
            text_config=T.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, vocab_size=64),
            image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default")),
    }


def test_real_size_path_runs_with_patched_loaders(monkeypatch):
    """model=sd15 builds the architectures of ``real_models`` through the stages' patched ``load_hf`` and feeds them
    the real processors' inputs; here with narrow models so it fits a CPU test."""
    from conftest import compose_config
    from asuka.benchmark import largen_data as task
    from asuka.benchmark.tasks import resolve_env

    monkeypatch.setattr(task, "real_models", _narrow_models_at_real_input_sizes)
    cfg = compose_config("benchmark", ["task=largen_data", "bench_model=sd15", "device=cpu", "size=64", "batch=1",
                                       "warmup=0", "repeats=1", "largen_data.new_tokens=2"])
    env = resolve_env(cfg)
    assert env.model == "sd15"
    r = task.largen_data(cfg, env)
    assert all(v > 0 for v in r["images_per_s"].values())
    assert all(v > 0 for v in r["flops_per_image_timed"].values())
