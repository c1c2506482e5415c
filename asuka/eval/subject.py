"""Evaluation of subject- and text-prompted inpainting (``dataset.kind: subject``): LAR-Gen and its baselines.

``python scripts/eval.py method=largen dataset=dreambench_coco``. Every item is a scene, a mask, a subject (+ its
mask) and a prompt, read from ``<root>/benchmark.jsonl`` (``format: jsonl``, layout in configs/dataset/
dreambench_coco.yaml) or from a quadruplet manifest (``format: quadruplets``, the caption as prompt). Scenes and masks
are resized to ``resolution``; image ``i`` is generated with seed ``seed + i`` into ``<run_dir>/predictions`` (kept
on a rerun). Metrics: CLIP-I, DINO, CLIP-T on the generated region, background PSNR/LPIPS on the known pixels
(predictions are not pasted back, so the decoder's colour drift counts), FID of predictions vs scenes.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf

from asuka.data.images import image_size, load_image, load_mask, pil_to_tensor
from asuka.eval.features import build_inception, inception_weights_file
from asuka.eval.metrics import build_lpips, frechet_distance, lpips_metric, lpips_trunk_file
from asuka.eval.subject_metrics import SubjectScorer, background_psnr, dino_weights_folder, generated_region
from asuka.models.largen.clip_image import prepare_subject
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError, DataError
from asuka.utils.paths import inside

SUBJECT_METHODS = ("largen", "sd_text", "sd_ip_adapter", "paint_by_example")
BENCHMARK_FILE = "benchmark.jsonl"
METRICS = ("clip_i", "dino", "clip_t", "bg_psnr", "bg_lpips")


@dataclass(frozen=True)
class SubjectItem:
    name: str
    scene: Path
    mask: Path
    subject: Path
    subject_mask: Path | None
    prompt: str


def load_subject_items(dataset_cfg: Any) -> list[SubjectItem]:
    """The benchmark's items; DataError naming the file for a missing file or a bad line."""
    root = Path(os.path.expanduser(str(dataset_cfg.root)))
    if str(dataset_cfg.get("format", "jsonl")) == "quadruplets":
        from asuka.data.quadruplets import load_manifest

        return [SubjectItem(q.id, q.scene, q.mask, q.subject, q.subject_mask, q.caption) for q in load_manifest(root)]
    path = root / BENCHMARK_FILE
    if not path.is_file():
        raise DataError(f"{path}: benchmark file not found (one JSON line per item; see configs/dataset/dreambench_coco.yaml)")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            where = f"{path}:{n}"
            name = str(r["name"])
            inside(root, f"{name}.png", f"{where}: name")  # it names the prediction written under the run folder
            item = SubjectItem(name, *(inside(root, str(r[k]), f"{where}: {k}") for k in ("scene", "mask", "subject")),
                               inside(root, str(r["subject_mask"]), f"{where}: subject_mask")
                               if r.get("subject_mask") else None, str(r.get("prompt", "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: bad benchmark line ({exc})") from None
        missing = [str(p) for p in (item.scene, item.mask, item.subject, item.subject_mask) if p and not p.is_file()]
        if missing:
            raise DataError(f"{path}:{n}: missing file(s) {', '.join(missing)}")
        items.append(item)
    if not items:
        raise DataError(f"{path}: no items")
    return items


def check_subject_inputs(items: list[SubjectItem]) -> None:
    """Before any model loads: every scene, subject and mask readable (headers and integrity, masks decoded) and
    each mask the size of its image, so a bad file never stops a generation half-way."""
    for item in items:
        size = image_size(item.scene)
        hole = load_mask(item.mask)
        if (hole.shape[1], hole.shape[0]) != size:
            raise DataError(f"{item.mask}: mask is {hole.shape[1]}x{hole.shape[0]} but its scene {item.scene} is "
                            f"{size[0]}x{size[1]}")
        subject = image_size(item.subject)
        if item.subject_mask is not None:
            sub = load_mask(item.subject_mask)
            if (sub.shape[1], sub.shape[0]) != subject:
                raise DataError(f"{item.subject_mask}: subject mask is {sub.shape[1]}x{sub.shape[0]} but its subject "
                                f"{item.subject} is {subject[0]}x{subject[1]}")


def _inputs(item: SubjectItem, resolution: int) -> tuple[PIL.Image.Image, PIL.Image.Image, PIL.Image.Image, PIL.Image.Image | None]:
    scene = load_image(item.scene).resize((resolution, resolution), PIL.Image.BICUBIC)
    hole = PIL.Image.fromarray(load_mask(item.mask).astype(np.uint8) * 255).resize((resolution, resolution), PIL.Image.NEAREST)
    sub_mask = None if item.subject_mask is None else PIL.Image.fromarray(load_mask(item.subject_mask).astype(np.uint8) * 255)
    return scene, hole, load_image(item.subject), sub_mask


Method = Callable[[PIL.Image.Image, PIL.Image.Image, str, PIL.Image.Image, PIL.Image.Image | None, torch.Generator],
                  PIL.Image.Image]


def build_method(cfg: DictConfig, device: torch.device, work_dir: Path) -> Method:
    """``(scene, mask, prompt, subject, subject_mask, generator) -> image`` for ``method.name``."""
    name, steps = cfg.method.name, int(cfg.num_inference_steps)
    if name == "largen":
        from asuka.pipelines.largen_build import build_largen_pipeline

        pipe = build_largen_pipeline(cfg, device)
        pipe.set_progress_bar_config(disable=True)
        return lambda scene, hole, prompt, subject, sub_mask, gen: pipe(  # noqa: E731
            scene, hole, prompt=prompt, subject_image=subject, subject_mask=sub_mask, num_inference_steps=steps,
            image_scale=float(cfg.largen.image_scale), guidance_scale=float(cfg.largen.guidance_scale),
            guidance_rescale=float(cfg.largen.guidance_rescale), generator=gen, paste_back=False).images[0]
    if name == "paint_by_example":
        pbe = _paint_by_example(cfg, device)
        return lambda scene, hole, prompt, subject, sub_mask, gen: pbe(  # noqa: E731  (no text input)
            example_image=prepare_subject(subject, None if sub_mask is None else np.asarray(sub_mask) >= 128),
            image=scene, mask_image=hole, height=scene.height, width=scene.width, num_inference_steps=steps,
            guidance_scale=float(cfg.method.guidance_scale), generator=gen).images[0]
    from asuka.pipelines.baselines import load_sd_baseline
    from asuka.pipelines.pipeline_largen import GUIDANCE_SCALE, encode_prompts, subject_tensor

    pipe = load_sd_baseline(cfg.paths.sd_inpaint, device=device, dtype=torch.float32,
                            sd_cfg=OmegaConf.select(cfg, "model.sd")).pipe
    pipe.set_progress_bar_config(disable=True)
    encoder = None
    if name == "sd_ip_adapter":
        encoder = _load_ip_adapter(cfg, pipe, work_dir).to(device)

    def run(scene, hole, prompt, subject, sub_mask, gen):  # noqa: ANN001, ANN202
        embeds = encode_prompts(pipe.tokenizer, pipe.text_encoder, [prompt, ""])
        kwargs: dict[str, Any] = {}
        if encoder is not None:
            from asuka.models.largen.clip_image import clip_pixels, image_hidden_states

            pixels = clip_pixels(subject_tensor(subject, sub_mask, 224).to(device), encoder)
            hidden = image_hidden_states(encoder, torch.cat([torch.zeros_like(pixels), pixels]))[0]
            kwargs["ip_adapter_image_embeds"] = [hidden[:, None]]
        return pipe(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], image=scene, mask_image=hole,
                    height=scene.height, width=scene.width, num_inference_steps=steps,
                    guidance_scale=float(OmegaConf.select(cfg, "largen.guidance_scale", default=GUIDANCE_SCALE)),
                    generator=gen,
                    **kwargs).images[0]

    return run


def _paint_by_example(cfg: DictConfig, device: torch.device) -> Any:
    """diffusers' Paint-by-Example from ``method.weights`` (Fantasy-Studio/Paint-by-Example, local folder), or tiny
    random parts (the tiny SD UNet and VAE, a tiny CLIP example encoder) with ``model=tiny``; DDIM as the others."""
    from diffusers import PaintByExamplePipeline
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExampleImageEncoder
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    from asuka.models.sd import build_inference_scheduler, load_sd_inpaint
    from asuka.models.backbones import is_tiny

    folder = cfg.method.get("weights")
    if is_given(folder):
        path = Path(os.path.expanduser(str(folder)))
        if not (path / "model_index.json").is_file():
            raise ConfigError("method.weights", f"{path}: not a diffusers Paint-by-Example folder (no model_index.json)")
        pipe = PaintByExamplePipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False)
        pipe.scheduler = build_inference_scheduler(pipe.scheduler.config)
    elif is_tiny(cfg):
        sd = load_sd_inpaint(cfg.model.sd, None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            encoder = PaintByExampleImageEncoder(CLIPVisionConfig(
                hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=224,
                patch_size=32), proj_size=int(sd.unet.config.cross_attention_dim))
        pipe = PaintByExamplePipeline(vae=sd.vae, image_encoder=encoder.eval(), unet=sd.unet,
                                      scheduler=build_inference_scheduler(sd.scheduler.config), safety_checker=None,
                                      feature_extractor=CLIPImageProcessor(), requires_safety_checker=False)
    else:
        raise ConfigError("method.weights", "method=paint_by_example needs the Paint-by-Example folder")
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_ip_adapter(cfg: DictConfig, pipe: Any, work_dir: Path) -> torch.nn.Module:
    """``largen.ip_adapter`` (an h94 ip-adapter-plus file) into the SD pipeline through diffusers' ``load_ip_adapter``;
    with tiny models a random adapter written in that layout. Returns the CLIP image encoder."""
    from asuka.models.largen.clip_image import build_image_encoder
    from asuka.models.backbones import is_tiny
    from asuka.pipelines.largen_build import build_assign

    path = cfg.largen.get("ip_adapter")
    if not is_given(path):
        if not is_tiny(cfg):
            raise ConfigError("largen.ip_adapter", "method=sd_ip_adapter needs an ip-adapter-plus_sd15 file")
        from asuka.models.largen.assign import save_ip_adapter_file

        path = save_ip_adapter_file(build_assign(cfg, pipe.unet), work_dir / "ip-adapter-plus_sd15.bin")
    path = Path(os.path.expanduser(str(path)))
    pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None,
                         low_cpu_mem_usage=False)
    pipe.set_ip_adapter_scale(float(cfg.largen.image_scale))
    return build_image_encoder(cfg.model.largen.image_encoder, cfg.largen.get("image_encoder"))


def generate(cfg: DictConfig, items: list[SubjectItem], out_dir: Path, device: torch.device) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [inside(out_dir, f"{it.name}.png", f"benchmark item name {it.name!r}") for it in items]
    todo = [i for i, t in enumerate(targets) if not t.is_file()]
    if not todo:
        return
    method = build_method(cfg, device, out_dir.parent)
    for i in todo:
        scene, hole, subject, sub_mask = _inputs(items[i], int(cfg.resolution))
        gen = torch.Generator("cpu").manual_seed(int(cfg.seed) + i)
        image = method(scene, hole, items[i].prompt, subject, sub_mask, gen).convert("RGB")
        tmp = targets[i].with_name(f".{targets[i].name}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, targets[i])


def score(cfg: DictConfig, items: list[SubjectItem], out_dir: Path, device: torch.device) -> tuple[dict, list[dict]]:
    m, res, seed = cfg.metrics, int(cfg.resolution), int(cfg.seed)
    scorer = SubjectScorer(m.weights, OmegaConf.select(cfg, "paths.clip"), OmegaConf.select(cfg, "paths.dino"),
                           device, seed)
    lpips_model, lpips_info = build_lpips(str(m.lpips_net), m.weights, OmegaConf.select(cfg, "paths.lpips_dir"),
                                          device=device, seed=seed)
    inception = build_inception(m.variant, m.weights, OmegaConf.select(cfg, "paths.inception"), device=device, seed=seed)
    rows, real, fake = [], [], []
    for item in items:
        scene, hole, subject, sub_mask = _inputs(item, res)
        pred = load_image(out_dir / f"{item.name}.png").resize((res, res), PIL.Image.BICUBIC)
        hole_np = np.asarray(hole) >= 128
        subject_np = np.asarray(prepare_subject(subject, None if sub_mask is None else np.asarray(sub_mask) >= 128))
        s = scorer([generated_region(np.asarray(pred), hole_np)], [subject_np], [item.prompt])
        p, g = pil_to_tensor(pred)[None], pil_to_tensor(scene)[None]
        known = torch.from_numpy(~hole_np).float()[None, None]
        row = {"name": item.name, "prompt": item.prompt, **{k: float(v[0]) for k, v in s.items()},
               "bg_psnr": float(background_psnr((p + 1) / 2, (g + 1) / 2, known)[0]),
               "bg_lpips": float(lpips_metric(lpips_model, p * known, g * known)[0])}
        rows.append(row)
        real.append(inception(((g + 1) * 127.5).round().to(torch.uint8)).numpy())
        fake.append(inception(((p + 1) * 127.5).round().to(torch.uint8)).numpy())
    summary = {k: float(np.nanmean([r[k] for r in rows])) if any(np.isfinite(r[k]) for r in rows) else None
               for k in METRICS}
    summary["fid"] = frechet_distance(np.concatenate(real), np.concatenate(fake)) if len(items) >= int(m.min_images_for_fid) else None
    meta = {"method": cfg.method.name, "dataset": cfg.dataset.get("name"), "image_count": len(items),
            "resolution": res, "seed": seed, "num_inference_steps": int(cfg.num_inference_steps),
            "weights": m.weights, "scorers": scorer.info, "lpips": lpips_info, "inception": inception.describe(),
            "predictions_dir": str(out_dir), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    if m.weights == "random":
        meta["warning"] = "RANDOM WEIGHTS: CLIP, DINO, LPIPS and Inception are random; plumbing only, not metrics"
    return {"metrics": summary, "meta": meta}, rows


def _check(cfg: DictConfig) -> None:
    if cfg.method.name not in SUBJECT_METHODS:
        raise ConfigError("method.name", f"{cfg.method.name!r} on a subject benchmark: expected one of "
                                         f"{', '.join(SUBJECT_METHODS)}")
    if cfg.metrics.weights == "pretrained":  # before any generation
        from asuka.eval.clip_score import clip_weights_folder

        clip_weights_folder(OmegaConf.select(cfg, "paths.clip"))
        dino_weights_folder(OmegaConf.select(cfg, "paths.dino"))
        inception_weights_file(cfg.metrics.variant, OmegaConf.select(cfg, "paths.inception"))
        lpips_trunk_file(str(cfg.metrics.lpips_net), OmegaConf.select(cfg, "paths.lpips_dir"))


def evaluate_subject(cfg: DictConfig, run_dir: Path) -> dict:
    """Generate (unless present) and score; write ``results.json``, ``results.md`` and ``per_image.csv``."""
    _check(cfg)
    items = load_subject_items(cfg.dataset)
    check_subject_inputs(items)
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.trainer.cpu else "cpu")
    out_dir = run_dir / "predictions"
    generate(cfg, items, out_dir, device)
    results, rows = score(cfg, items, out_dir, device)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    fmt = lambda v: "-" if v is None or not np.isfinite(v) else f"{v:.4f}"  # noqa: E731
    cols = [*METRICS, "fid"]
    lines = [f"# Subject evaluation: method={cfg.method.name}, dataset={cfg.dataset.get('name')}", "",
             *([f"**{results['meta']['warning']}**", ""] if "warning" in results["meta"] else []),
             "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
             "| " + " | ".join(fmt(results["metrics"][c]) for c in cols) + " |", ""]
    (run_dir / "results.md").write_text("\n".join(lines))
    with open(run_dir / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"[eval] {len(items)} items: " + "  ".join(f"{c} {fmt(results['metrics'][c])}" for c in cols) + f" -> {run_dir}")
    return results
