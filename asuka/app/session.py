"""What one request of the app does, without the page: check the inputs, build (once) and run each chosen method's
pipeline through the same calls as ``scripts/inpaint.py``, write the results and the settings that reproduce them.

Every check runs before any model is built, so a bad input costs nothing and the server keeps serving.
"""
from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig, OmegaConf

from asuka.data.canvas import extend_canvas, zoom_out_borders
from asuka.pipelines.inpaint_files import inpaint_one, working_size
from asuka.pipelines.methods import FLUX_METHODS, METHOD_LABELS, build_method_pipeline, flux_kwargs
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError, DataError


@dataclass
class Outpaint:
    """Borders in pixels per side, or ``zoom`` (> 1: every side grows so the canvas is ``zoom`` times larger)."""

    left: int = 0
    right: int = 0
    top: int = 0
    bottom: int = 0
    zoom: float = 1.0
    overlap: int = 8  # our choice: pixels of the original regenerated along each new border (seam)


@dataclass
class Request:
    image: PIL.Image.Image
    mask: np.ndarray | None  # bool, True = hole; None with outpaint
    methods: list[str]
    seed: int = 0
    steps: int = 50
    guidance: float | None = None  # None: each method's default
    condition_weight: float | None = None
    paste_back: bool = True
    max_side: int | None = 1024
    downscale: bool = True
    outpaint: Outpaint | None = None
    prompt: str = ""
    subject: PIL.Image.Image | None = None
    subject_mask: np.ndarray | None = None
    image_scale: float = 1.0


@dataclass
class Result:
    method: str
    label: str
    image: PIL.Image.Image
    seconds: float
    files: list[Path] = field(default_factory=list)


class AppModels:
    """One config per method (composed once) and each method's pipeline built on first use, then kept: a second
    request does not reload anything. One lock: requests are served one at a time."""

    def __init__(self, configs: dict[str, DictConfig], overrides: list[str] | None = None,
                 device: torch.device | None = None) -> None:
        self.configs = configs
        self.overrides = [o for o in overrides or [] if not o.startswith(("method=", "app."))]  # for the commands
        cpu = any(bool(OmegaConf.select(c, "trainer.cpu", default=False)) for c in configs.values())
        self.device = device or torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
        self.pipelines: dict[str, Any] = {}
        self.builds = 0
        self.lock = threading.Lock()

    def pipeline(self, method: str) -> Any:
        if method not in self.pipelines:
            pipe = build_method_pipeline(self.configs[method], self.device)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(desc=METHOD_LABELS.get(method, method))
            self.pipelines[method] = pipe
            self.builds += 1
        return self.pipelines[method]


def method_configs(overrides: list[str], methods: list[str]) -> dict[str, DictConfig]:
    """``configs/app.yaml`` composed once per method with the user's overrides (Hydra must be initialised: inside
    ``@hydra.main`` or ``initialize_config_dir``), each with its exported pipeline folder from ``app.pipelines``."""
    from hydra import compose

    unknown = sorted(set(methods) - set(METHOD_LABELS))
    if unknown:
        raise ConfigError("app.methods", f"unknown {', '.join(unknown)}; expected some of {', '.join(METHOD_LABELS)}")
    configs = {}
    for method in methods:
        cfg = compose(config_name="app", overrides=[*overrides, f"method={method}"])
        OmegaConf.set_struct(cfg, False)
        folder = OmegaConf.select(cfg, f"app.pipelines.{method}")
        cfg.pipeline = folder if is_given(folder) else None
        configs[method] = cfg
    return configs


def prepare(req: Request, available: list[str]) -> tuple[PIL.Image.Image, np.ndarray]:
    """The canvas and hole to inpaint, after every check (one readable line each)."""
    if not req.methods:
        raise ConfigError("methods", "choose at least one method")
    missing = [m for m in req.methods if m not in available]
    if missing:
        raise ConfigError("methods", f"{', '.join(missing)} not offered here (app.methods: {', '.join(available)})")
    if req.steps < 1:
        raise ConfigError("steps", f"{req.steps}: expected >= 1")
    image = req.image.convert("RGB")
    if req.outpaint is not None:
        o = req.outpaint
        borders = zoom_out_borders(image.size, o.zoom) if o.zoom > 1 else (o.left, o.right, o.top, o.bottom)
        image, hole = extend_canvas(image, *borders, overlap=o.overlap)
        if req.mask is not None and req.mask.any():  # a painted hole inside the image is filled too
            hole[borders[2]:borders[2] + req.mask.shape[0], borders[0]:borders[0] + req.mask.shape[1]] |= req.mask
    else:
        if req.mask is None or not req.mask.any():
            raise DataError("the mask has no hole: paint over the region to fill, upload a mask, or outpaint")
        hole = req.mask
    if hole.shape != (image.height, image.width):
        raise DataError(f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is {image.width}x{image.height}")
    if hole.all():
        raise DataError("the mask covers the whole image: nothing is left to inpaint from")
    if req.max_side is not None and max(image.size) > req.max_side and not req.downscale:
        raise ConfigError("max_side", f"the image is {image.width}x{image.height}, above max_side={req.max_side}: "
                                      "tick 'downscale' (inpaint at max_side and paste back) or give a smaller image")
    if "largen" in req.methods and not req.prompt.strip() and req.subject is None:
        raise ConfigError("prompt", "LAR-Gen needs a prompt, a subject image, or both")
    return image, hole


def _command(overrides: list[str], pipeline: Any, method: str, req: Request, files: dict[str, str]) -> str:
    """The ``scripts/inpaint.py`` command that reproduces one result from the saved input and mask (with the
    launch's own overrides: experiment, model, paths.*)."""
    args = [f"method={method}", *overrides, *([f"pipeline={pipeline}"] if is_given(pipeline) else []), f"image={files['image']}", f"mask={files['mask']}",
            f"out={method}.png", f"steps={req.steps}", f"seed={req.seed}", f"paste_back={str(req.paste_back).lower()}",
            f"max_side={'null' if req.max_side is None else req.max_side}", f"downscale={str(req.downscale).lower()}"]
    if req.guidance is not None:
        args.append(f"guidance={req.guidance}" if method in FLUX_METHODS
                    else f"{'largen.' if method == 'largen' else ''}guidance_scale={req.guidance}")
    if req.condition_weight is not None and method == "asuka_flux":
        args.append(f"condition_weight={req.condition_weight}")
    if method == "largen":
        args += [f"prompt={req.prompt}", f"largen.image_scale={req.image_scale}"]
        args += [f"subject={files[k]}" if k == "subject" else f"subject_mask={files[k]}"
                 for k in ("subject", "subject_mask") if k in files]
    return shlex.join(["python", "scripts/inpaint.py", *args])


def _largen_kwargs(req: Request, cfg: DictConfig) -> dict[str, Any]:
    subject_mask = None if req.subject_mask is None else PIL.Image.fromarray(req.subject_mask.astype(np.uint8) * 255)
    return {"prompt": req.prompt, "subject_image": req.subject, "subject_mask": subject_mask,
            "image_scale": float(req.image_scale), "guidance_rescale": float(cfg.largen.guidance_rescale)}


def run_request(models: AppModels, req: Request, out_dir: Path,
                progress: Callable[[float, str], None] | None = None) -> tuple[list[Result], Path]:
    """Inpaint ``req`` with every chosen method on the same seed; returns the results and the settings JSON."""
    image, hole = prepare(req, list(models.configs))
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"image": str(out_dir / "input.png"), "mask": str(out_dir / "mask.png")}
    image.save(files["image"])
    PIL.Image.fromarray(hole.astype(np.uint8) * 255).save(files["mask"])
    if req.subject is not None:
        files["subject"] = str(out_dir / "subject.png")
        req.subject.convert("RGB").save(files["subject"])
        if req.subject_mask is not None:
            files["subject_mask"] = str(out_dir / "subject_mask.png")
            PIL.Image.fromarray(req.subject_mask.astype(np.uint8) * 255).save(files["subject_mask"])
    results, settings = [], {"request": _request_json(req), "input_size": list(image.size), "methods": {}}
    with models.lock:
        for k, method in enumerate(req.methods):
            if progress:
                progress(k / len(req.methods), f"{METHOD_LABELS[method]}: loading / sampling")
            cfg = models.configs[method]
            pipe = models.pipeline(method)
            extra = _largen_kwargs(req, cfg) if method == "largen" else flux_kwargs(method, req.guidance,
                                                                                     req.condition_weight)
            guidance = req.guidance if req.guidance is not None and method not in FLUX_METHODS else (
                float(cfg.largen.guidance_scale) if method == "largen" else float(cfg.guidance_scale))
            start = time.perf_counter()
            result = inpaint_one(pipe, image, hole, req.steps, req.seed, guidance, req.paste_back,
                                 req.max_side if req.downscale else None, extra)
            seconds = time.perf_counter() - start
            path = out_dir / f"{method}.png"
            result.save(path)
            results.append(Result(method, METHOD_LABELS[method], result, seconds, [path]))
            settings["methods"][method] = {"seconds": seconds, "output": str(path), "guidance_scale": guidance,
                                           **{k: v for k, v in extra.items() if isinstance(v, (int, float, str))},
                                           "command": _command(models.overrides, cfg.get("pipeline"), method, req, files)}
    work = working_size(image.size, req.max_side if req.downscale else None)
    settings["worked_at"] = list(work)
    json_path = out_dir / "settings.json"
    json_path.write_text(json.dumps(settings, indent=2) + "\n")
    return results, json_path


def _request_json(req: Request) -> dict[str, Any]:
    """The request's settings (not its pixels: ``asdict`` would deep-copy the images only to drop them)."""
    skip = {"image", "mask", "subject", "subject_mask"}
    data = {f.name: getattr(req, f.name) for f in fields(req) if f.name not in skip}
    data["outpaint"] = None if req.outpaint is None else asdict(req.outpaint)
    data["has_subject"], data["has_subject_mask"] = req.subject is not None, req.subject_mask is not None
    return data
