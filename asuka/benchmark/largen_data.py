"""task=largen_data: images/s of each LAR-Gen data-engine stage (tag, detect, segment, caption) through the real
adapters, the FLOPs of the real models per image, and the cost estimate for 1M images.

``model=tiny``: tiny random CLIP / Grounding DINO / SAM / LLaVA (``asuka.data.largen_engine.tiny``) on procedural
scenes. ``model=sd15``: the real architectures (CLIP ViT-L/14, Grounding DINO base, SAM ViT-H, LLaVA-1.5-7B) with
random weights, for a GPU; only their loaders are replaced, nothing is downloaded.

The real models' FLOPs are counted by ``FlopCounterMode`` on fake tensors (shapes only, no memory), at their
processors' input sizes; LLaVA's decoding is counted as 2 x (language-model parameters) per new token.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import torch
import transformers as T
from omegaconf import DictConfig

from asuka.benchmark.common import BenchEnv
from asuka.benchmark.timing import CLOCKS, count_flops, peak_bf16_flops, print_round, time_runs
from asuka.data.largen_engine import captioner, detector, segmenter, tagger
from asuka.data.largen_engine.samples import make_object_scene
from asuka.data.largen_engine.stages import Stages, build_stages
from asuka.data.largen_engine.tiny import build_tiny_models, tiny_model_stages
from asuka.data.quadruplets import cut_out_subject

STAGES = ("tagger", "detector", "segmenter", "captioner")


def real_models() -> dict[str, Callable[[], torch.nn.Module]]:
    """The released architectures (config.json values of the hub ids in configs/largen_stages/models.yaml)."""
    return {
        "tagger": lambda: T.CLIPModel(T.CLIPConfig(  # openai/clip-vit-large-patch14
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14), projection_dim=768)),
        # IDEA-Research/grounding-dino-base
        "detector": lambda: T.GroundingDinoForObjectDetection(T.GroundingDinoConfig(
            backbone_config=T.SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                                         image_size=384, out_features=["stage2", "stage3", "stage4"]),
            text_config=T.BertConfig(), d_model=256, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=2048,
            decoder_ffn_dim=2048, num_queries=900, num_feature_levels=4, use_timm_backbone=False)),
        "segmenter": lambda: T.SamModel(T.SamConfig(vision_config=dict(  # facebook/sam-vit-huge
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31],
            mlp_dim=5120))),
        "captioner": lambda: T.LlavaForConditionalGeneration(T.LlavaConfig(  # llava-hf/llava-1.5-7b-hf
            vision_config=T.CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                             num_attention_heads=16, image_size=336, patch_size=14),
            text_config=T.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32064),
            image_token_id=4, vision_feature_layer=-2, vision_feature_select_strategy="default")),
    }


@contextlib.contextmanager
def _fake_tensors() -> Iterator[None]:
    """Fake tensors (shapes only, no memory, no compute), with transformers' input checks that read values switched
    off."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers.models.grounding_dino import modeling_grounding_dino
    from transformers.models.llava import modeling_llava

    with contextlib.ExitStack() as stack:
        for module in (modeling_grounding_dino, modeling_llava):
            stack.enter_context(mock.patch.object(module, "torch_compilable_check", lambda *a, **k: None))
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        yield


def _fake(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module built on the meta device, its parameters and buffers then replaced by fake CPU tensors of the same
    shapes (call inside ``_fake_tensors``; building under fake tensors would deep-copy them, which reads storage)."""
    with torch.device("meta"):
        module = build()
    fresh: dict[int, torch.Tensor] = {}  # tied weights stay tied
    for sub in module.modules():
        for store in (sub._parameters, sub._buffers):
            for name, t in store.items():
                if t is not None:
                    if id(t) not in fresh:
                        empty = torch.empty(t.shape, dtype=t.dtype, device="cpu")
                        fresh[id(t)] = torch.nn.Parameter(empty, requires_grad=False) if store is sub._parameters \
                            else empty
                    store[name] = fresh[id(t)]
    return module.eval()


def real_flops(boxes_per_image: float, text_tokens: int, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """FLOPs per image of each real model: CLIP image tower at 224; Grounding DINO at 800 x 1067 (a 3:4 image at its
    processor's shortest edge 800) with ``text_tokens``; SAM's encoder at 1024 + one decoder call per box; LLaVA per
    kept box: prefill of 576 image + ``prompt_tokens`` tokens, then ``new_tokens`` decoded."""
    out: dict[str, float] = {}
    build = real_models()
    with _fake_tensors(), torch.no_grad():
        clip = _fake(build["tagger"])
        out["tagger"] = count_flops(lambda: clip.get_image_features(pixel_values=torch.zeros(1, 3, 224, 224)))
        dino = _fake(build["detector"])
        ids = torch.ones(1, text_tokens, dtype=torch.long)
        out["detector"] = count_flops(lambda: dino(pixel_values=torch.zeros(1, 3, 800, 1067), input_ids=ids,
                                                   attention_mask=torch.ones_like(ids), token_type_ids=ids * 0))
        sam = _fake(build["segmenter"])
        emb: dict[str, torch.Tensor] = {}
        encoder = count_flops(lambda: emb.setdefault("image", sam.get_image_embeddings(torch.zeros(1, 3, 1024, 1024))))
        one_box = count_flops(lambda: sam(image_embeddings=emb["image"], multimask_output=False,
                                          input_boxes=torch.tensor([[[10.0, 10, 500, 500]]])))
        out["segmenter"] = encoder + boxes_per_image * one_box
        llava = _fake(build["captioner"])
        ids = torch.ones(1, 576 + prompt_tokens, dtype=torch.long)
        ids[0, 1:577] = 4
        prefill = count_flops(lambda: llava(pixel_values=torch.zeros(1, 3, 336, 336), input_ids=ids,
                                            attention_mask=torch.ones_like(ids)))
        lm_params = sum(p.numel() for p in llava.model.language_model.parameters())
        out["captioner"] = boxes_per_image * (prefill + 2.0 * lm_params * new_tokens)
    return {k: float(v) for k, v in out.items()}


@contextlib.contextmanager
def _real_size_loaders(device: torch.device, dtype: torch.dtype, root: Path) -> Iterator[dict]:
    """Stage configs whose ``load_hf`` builds the real architectures with random weights (processors at the real
    input sizes, tokenizers from the tiny folders)."""
    paths = build_tiny_models(root)
    processors = {
        "tagger": T.CLIPProcessor(image_processor=T.CLIPImageProcessor(),
                                  tokenizer=T.AutoProcessor.from_pretrained(paths["tagger"]).tokenizer),
        "detector": T.GroundingDinoProcessor(image_processor=T.GroundingDinoImageProcessor(),
                                             tokenizer=T.AutoProcessor.from_pretrained(paths["detector"]).tokenizer),
        "segmenter": T.SamProcessor(image_processor=T.SamImageProcessor()),
        "captioner": T.LlavaProcessor(
            image_processor=T.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
            tokenizer=T.AutoProcessor.from_pretrained(paths["captioner"]).tokenizer, patch_size=14,
            vision_feature_select_strategy="default", num_additional_image_tokens=1),
    }
    builders = real_models()
    stage_of = {paths[s]: s for s in STAGES}

    def load(model_cls: type, name: str, device_name: str, dtype_name: str) -> tuple[Any, Any]:
        with torch.device(device):
            model = builders[stage_of[name]]().to(dtype).eval()
        return model, processors[stage_of[name]]

    with contextlib.ExitStack() as stack:
        for module in (tagger, detector, segmenter, captioner):
            stack.enter_context(mock.patch.object(module, "load_hf", load))
        yield tiny_model_stages(paths)


def _stage_calls(stages: Stages, images: list, tags_per_image: int, boxes_per_image: int
                 ) -> dict[str, Callable[[], Any]]:
    """One batch call per stage, each fed what the previous stage gives (top tags, the best boxes)."""
    found = stages.tagger(images)
    tags = [[t for t, _ in sorted(f, key=lambda ts: -ts[1])[:tags_per_image]] for f in found]
    dets = [sorted(d, key=lambda d: -d.score)[:boxes_per_image] for d in stages.detector(images, tags)]
    boxes = [[d.box for d in img_dets] for img_dets in dets]
    masks = stages.segmenter(images, boxes)
    subjects, subject_tags = [], []
    for img, img_dets, img_masks in zip(images, dets, masks):
        for det, (mask, _) in zip(img_dets, img_masks):
            box = tuple(int(v) for v in det.box)
            if mask[box[1]:box[3], box[0]:box[2]].size:
                subjects.append(cut_out_subject(img, mask, box)[0])
                subject_tags.append(det.tag)
    return {"tagger": lambda: stages.tagger(images), "detector": lambda: stages.detector(images, tags),
            "segmenter": lambda: stages.segmenter(images, boxes),
            "captioner": lambda: stages.captioner(subjects, subject_tags)}


def largen_data(cfg: DictConfig, env: BenchEnv) -> dict[str, Any]:
    """Per stage: seconds per batch of ``batch`` images and images/s; FLOPs per image of the models timed and of the
    real ones; the 1M-image estimate at ``largen_data.mfu`` of the device's (or an H100's) bf16 peak."""
    opts = cfg.largen_data
    batch = env.batch or 2
    images = [make_object_scene(env.seed, i, env.size) for i in range(batch)]
    with tempfile.TemporaryDirectory() as tmp:
        if env.model == "tiny":
            stage_cfg = tiny_model_stages(build_tiny_models(Path(tmp)))
            loaders = contextlib.nullcontext(stage_cfg)
        else:
            loaders = _real_size_loaders(env.device, env.dtype, Path(tmp))
        with loaders as stage_cfg:
            stage_cfg["tagger"]["vocabulary"] = ["ball", "box", "kite", "vase"]
            stages = build_stages(stage_cfg, device=str(env.device))
        calls = _stage_calls(stages, images, int(opts.tags_per_image), int(opts.boxes_per_image))
        flops = {name: count_flops(fn) / batch for name, fn in calls.items()}
        stats = time_runs(calls, env.warmup, env.repeats, env.device, clock=CLOCKS[env.clock], progress=print_round)
    per_s = {name: batch / s.median for name, s in stats.items()}
    real = real_flops(float(opts.boxes_per_image), int(opts.text_tokens), int(opts.prompt_tokens),
                      int(opts.new_tokens))
    peak = peak_bf16_flops(torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None)
    peak = peak or peak_bf16_flops(str(opts.reference_gpu))
    total = sum(real.values())
    gpu_hours = 1e6 * total / (float(opts.mfu) * peak) / 3600
    return {
        "batch": batch,
        "size": env.size,
        "clock": env.clock,
        "images_per_s": per_s,
        "pipeline_images_per_s": 1.0 / sum(1.0 / v for v in per_s.values()),
        **{k: v for name, s in stats.items() for k, v in s.as_dict(f"{name}_s_").items()},
        "flops_per_image_timed": flops,
        "flops_per_image_real": real,
        "estimate_1m_images": {
            "note": "estimate: real-model FLOPs / (mfu x bf16 peak); not a measurement",
            "flops": 1e6 * total, "mfu": float(opts.mfu), "peak_flops": peak, "gpu_hours": gpu_hours,
            "share": {k: v / total for k, v in real.items()},
        },
    }


def summary_text(report: dict[str, Any]) -> str:
    """The terminal lines of a largen_data run."""
    r, est = report["results"], report["results"]["estimate_1m_images"]
    rates = ", ".join(f"{k} {v:.3g}" for k, v in r["images_per_s"].items())
    real = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in r["flops_per_image_real"].items())
    return (f"largen_data {report['model']} {r['size']}px batch {r['batch']} ({r['clock']} clock): images/s {rates}; "
            f"pipeline {r['pipeline_images_per_s']:.3g} images/s\n  real models, TFLOPs per image: {real}\n"
            f"  1M images (estimate, {est['mfu']:.0%} of {est['peak_flops'] / 1e12:.0f} TFLOP/s): "
            f"{est['gpu_hours']:.1f} GPU-hours")
