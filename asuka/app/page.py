"""The Gradio page of ``scripts/app.py``: upload a photo, paint the hole (or upload a mask, or outpaint), pick any
methods, and see their results side by side on the same seed. The work is :func:`asuka.app.session.run_request`."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import PIL.Image
from omegaconf import DictConfig

from asuka.app.session import AppModels, Outpaint, Request, run_request
from asuka.data.canvas import painted_mask
from asuka.models.backbones import is_tiny
from asuka.pipelines.methods import METHOD_LABELS
from asuka.utils.errors import AsukaError

log = logging.getLogger(__name__)
RANDOM_BANNER = ("**These are the tiny RANDOM demo models** (`experiment=demo`): the results show that every method "
                 "runs, not what it can do. Point the app at real weights with the keys the other scripts use "
                 "(README, \"The interactive demo\").")


def _editor_inputs(editor: dict | None, mask_file: np.ndarray | None) -> tuple[PIL.Image.Image, np.ndarray | None]:
    """The image of the editor and its hole: an uploaded mask file (gray >= 128 = hole) wins over painted strokes."""
    if not editor or editor.get("background") is None:
        raise AsukaError("upload an image first")
    background = np.asarray(editor["background"])
    image = PIL.Image.fromarray(background[..., :3].astype(np.uint8))
    if mask_file is not None:
        gray = np.asarray(PIL.Image.fromarray(np.asarray(mask_file).astype(np.uint8)).convert("L"))
        return image, gray >= 128
    layers = [np.asarray(layer) for layer in editor.get("layers") or [] if layer is not None]
    return image, painted_mask(layers, image.size) if layers else None


def _optional(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def make_handler(models: AppModels, out_root: Path):
    """The Run button's function (also the API ``/inpaint`` that gradio_client calls)."""

    def inpaint(editor, mask_file, methods, mode, left, right, top, bottom, zoom, overlap, prompt, subject,
                subject_mask, image_scale, seed, steps, guidance, condition_weight, paste_back, max_side, downscale,
                progress=gr.Progress(track_tqdm=True)):
        try:
            image, mask = _editor_inputs(editor, mask_file)
            outpaint = (Outpaint(int(left or 0), int(right or 0), int(top or 0), int(bottom or 0), float(zoom or 1),
                                 int(overlap or 0)) if mode == "outpaint" else None)
            subj_mask = None if subject_mask is None else np.asarray(
                PIL.Image.fromarray(np.asarray(subject_mask).astype(np.uint8)).convert("L")) >= 128
            req = Request(image=image, mask=mask, methods=list(methods or []), seed=int(seed), steps=int(steps),
                          guidance=_optional(guidance), condition_weight=_optional(condition_weight),
                          paste_back=bool(paste_back), max_side=None if not max_side else int(max_side),
                          downscale=bool(downscale), outpaint=outpaint, prompt=str(prompt or ""),
                          subject=None if subject is None else PIL.Image.fromarray(np.asarray(subject)[..., :3]),
                          subject_mask=subj_mask, image_scale=float(image_scale))
            out_dir = out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns() % 10**6:06d}"
            results, settings = run_request(models, req, out_dir, lambda f, text: progress(f, desc=text))
        except AsukaError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # not a user mistake: one line in the page, the trace in the server's log
            log.exception("request failed")
            raise gr.Error(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}") from None
        gallery = [(r.image, f"{r.label} ({r.seconds:.2f} s)") for r in results]
        compare = (results[0].image, results[1].image) if len(results) >= 2 else None
        files = [str(p) for r in results for p in r.files] + [str(settings), str(out_dir / "input.png"),
                                                              str(out_dir / "mask.png")]
        status = "Done: " + ", ".join(f"{r.label} {r.seconds:.2f} s" for r in results) + \
                 f" (seed {req.seed}, {req.steps} steps). `settings.json` has the `scripts/inpaint.py` commands."
        return gallery, gr.update(value=compare, visible=compare is not None), files, status

    return inpaint


def build_page(cfg: DictConfig, models: AppModels) -> gr.Blocks:
    """The page; every method of ``app.methods`` can be chosen."""
    offered = list(models.configs)
    tiny = any(is_tiny(c) for c in models.configs.values())
    handler = make_handler(models, Path(str(cfg.app.out_dir)))
    with gr.Blocks(title="asuka: inpainting methods side by side") as page:
        gr.Markdown("# Inpainting, method by method\nUpload a photo, paint the hole (or upload a mask, or "
                    "outpaint), choose methods and press **Run**. Every method runs on the same seed.")
        if tiny:
            gr.Markdown(RANDOM_BANNER, elem_id="random-banner")
        with gr.Row():
            editor = gr.ImageEditor(label="Image: paint the hole", type="numpy", sources=("upload", "clipboard"),
                                    value=str(cfg.app.example) if cfg.app.get("example") else None,
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), elem_id="editor")
            mask_file = gr.Image(label="or a mask file (white = hole)", type="numpy", image_mode="L",
                                 elem_id="mask-file")
        methods = gr.CheckboxGroup([(METHOD_LABELS[m], m) for m in offered], label="Methods",
                                   value=[m for m in cfg.app.default_methods if m in offered], elem_id="methods")
        mode = gr.Radio([("Inpaint the painted hole", "inpaint"), ("Outpaint: extend the canvas", "outpaint")],
                        value="inpaint", label="Task", elem_id="mode")
        with gr.Group(visible=False) as outpaint_box:
            with gr.Row():
                left, right = gr.Number(64, label="left (px)", precision=0), gr.Number(64, label="right (px)",
                                                                                        precision=0)
                top, bottom = gr.Number(0, label="top (px)", precision=0), gr.Number(0, label="bottom (px)",
                                                                                      precision=0)
            with gr.Row():
                zoom = gr.Slider(1.0, 3.0, value=1.0, step=0.05, label="all sides: zoom out (1 = use the sides above)")
                overlap = gr.Number(8, label="overlap band (px)", precision=0)
        with gr.Group(visible="largen" in (cfg.app.default_methods or [])) as largen_box:
            gr.Markdown("**LAR-Gen**: a text prompt and/or a subject image (with its mask).")
            prompt = gr.Textbox(label="prompt", elem_id="prompt")
            with gr.Row():
                subject = gr.Image(label="subject image (optional)", type="numpy")
                subject_mask = gr.Image(label="subject mask (optional, white = subject)", type="numpy",
                                        image_mode="L")
            image_scale = gr.Slider(0.0, 1.5, value=1.0, step=0.05, label="image scale (lambda)")
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                seed = gr.Number(int(cfg.seed), label="seed", precision=0)
                steps = gr.Number(int(cfg.steps), label="steps", precision=0, elem_id="steps")
                guidance = gr.Number(None, label="guidance (empty: each method's own)")
                condition_weight = gr.Number(None, label="condition weight (ASUKA-FLUX; empty: 0.5)")
            with gr.Row():
                paste_back = gr.Checkbox(bool(cfg.paste_back), label="paste the known pixels back")
                max_side = gr.Number(cfg.max_side, label="max side (px)", precision=0)
                downscale = gr.Checkbox(bool(cfg.downscale), label="downscale larger images and paste back")
        run = gr.Button("Run", variant="primary", elem_id="run")
        status = gr.Markdown(elem_id="status")
        gallery = gr.Gallery(label="Results", columns=3, elem_id="results", format="png")
        compare = gr.ImageSlider(label="Compare the first two", visible=False, elem_id="compare")
        downloads = gr.File(label="Downloads: results, settings.json, input and mask", file_count="multiple")

        methods.change(lambda m: gr.update(visible="largen" in (m or [])), methods, largen_box)
        mode.change(lambda m: gr.update(visible=m == "outpaint"), mode, outpaint_box)
        run.click(handler, [editor, mask_file, methods, mode, left, right, top, bottom, zoom, overlap, prompt,
                            subject, subject_mask, image_scale, seed, steps, guidance, condition_weight, paste_back,
                            max_side, downscale], [gallery, compare, downloads, status], api_name="inpaint")
    return page


def launch(cfg: DictConfig, overrides: list[str], block: bool = True) -> tuple[gr.Blocks, AppModels]:
    """``scripts/app.py``: compose each method's config (Hydra initialised), build the page and serve it (a queue:
    one request at a time; 127.0.0.1 and no share link unless told). ``block=False`` returns while it serves."""
    from asuka.app.session import method_configs

    models = AppModels(method_configs(overrides, list(cfg.app.methods)), overrides)
    page = build_page(cfg, models)
    page.queue(default_concurrency_limit=int(cfg.app.concurrency)).launch(
        server_name=str(cfg.app.host), server_port=int(cfg.app.port), share=bool(cfg.app.share),
        allowed_paths=[str(Path(str(cfg.app.out_dir)).resolve())], prevent_thread_lock=not block, quiet=not block)
    return page, models
