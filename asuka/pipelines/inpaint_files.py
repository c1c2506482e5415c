"""``scripts/inpaint.py``: inpaint one image or a folder of images with an exported (or demo) ASUKA pipeline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig

from asuka.data.images import IMAGE_EXTENSIONS, image_size, list_images, load_image, load_mask
from asuka.pipelines.methods import flux_kwargs
from asuka.utils.config import is_given
from asuka.utils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

# diffusers and the models are imported only once the inputs are read, so a bad file is reported at once.


def alias_mask_argument(argv: list[str]) -> list[str]:
    """``mask=PATH`` on the command line means the mask file, but Hydra reads ``mask=`` as the ``mask`` config group
    (the training masks). Rewrite it to ``mask_file=PATH`` before Hydra parses the arguments."""
    return ["mask_file=" + a[len("mask="):] if a.startswith("mask=") else a for a in argv]


def _pairs(cfg: DictConfig) -> list[tuple[Path, Path, Path]]:
    """(image, mask, output) triples: one from ``image/mask/out``, or a folder matched by file stem."""
    single = [is_given(cfg.get(k)) for k in ("image", "mask_file", "out")]
    folder = [is_given(cfg.get(k)) for k in ("image_dir", "mask_dir", "out_dir")]
    if any(single) and any(folder):
        raise ConfigError("image", "give either image/mask/out or image_dir/mask_dir/out_dir, not both")
    if any(single):
        for key, ok in zip(("image", "mask", "out"), single):
            if not ok:
                raise ConfigError(key, "missing (inpainting one image needs image=, mask= and out=)")
        return [tuple(Path(os.path.expanduser(str(cfg[k]))) for k in ("image", "mask_file", "out"))]
    if not any(folder):
        raise ConfigError("image", "nothing to inpaint: give image=/mask=/out= or image_dir=/mask_dir=/out_dir=")
    for key, ok in zip(("image_dir", "mask_dir", "out_dir"), folder):
        if not ok:
            raise ConfigError(key, "missing (inpainting a folder needs image_dir=, mask_dir= and out_dir=)")
    image_dir, mask_dir, out_dir = (Path(os.path.expanduser(str(cfg[k]))) for k in ("image_dir", "mask_dir", "out_dir"))
    for key, d in (("image_dir", image_dir), ("mask_dir", mask_dir)):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found ({key})")
    images = list_images(image_dir, exclude=[mask_dir, out_dir])
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    masks: dict[str, Path] = {}
    for m in list_images(mask_dir):
        masks.setdefault(m.relative_to(mask_dir).with_suffix("").as_posix(), m)
    pairs = []
    for img in images:
        stem = img.relative_to(image_dir).with_suffix("").as_posix()
        if stem not in masks:
            raise DataError(f"{img}: no mask named {stem}.* in {mask_dir}")
        pairs.append((img, masks[stem], out_dir / f"{stem}.png"))
    return pairs


def _pipeline(cfg: DictConfig, device: torch.device) -> "AsukaInpaintPipeline":
    from asuka.models.backbones import is_tiny
    from asuka.pipelines.build import build_pipeline, load_pipeline

    if is_given(cfg.get("pipeline")):
        pipe = load_pipeline(str(cfg.pipeline), device=device, dtype=cfg.get("dtype"))
        return recipe_for(pipe, str(cfg.get("recipe") or "ours"))
    if cfg.method.name != "asuka":  # the baselines and ASUKA-FLUX: built from paths.* as eval.py builds them
        from asuka.pipelines.methods import build_method_pipeline

        return recipe_for(build_method_pipeline(cfg, device), str(cfg.get("recipe") or "ours"))
    if not is_tiny(cfg):  # building from the stage folders is scripts/export_pipeline.py's job
        raise ConfigError("pipeline", "give an exported pipeline folder (pipeline=DIR), or use experiment=demo")
    return recipe_for(build_pipeline(cfg, device=device), str(cfg.get("recipe") or "ours"))


def recipe_for(pipe: "AsukaInpaintPipeline", recipe: str) -> "AsukaInpaintPipeline":
    """``recipe=`` applied to an ASUKA-FLUX pipeline; the other pipelines only have ``ours``."""
    from asuka.pipelines.build_flux import with_recipe
    from asuka.pipelines.pipeline_asuka_flux import AsukaFluxFillPipeline, check_recipe

    if isinstance(pipe, AsukaFluxFillPipeline):
        return with_recipe(pipe, check_recipe(recipe))
    if recipe != "ours":
        raise ConfigError("recipe", f"'{recipe}' is for the ASUKA-FLUX pipeline only; this one is "
                                    f"{type(pipe).__name__}")
    return pipe


def working_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down so that the longer side is at most ``max_side`` (unchanged when it already is)."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(size))
    return (max(8, round(size[0] * scale)), max(8, round(size[1] * scale)))


def shrink_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask resized down to (width, height): a pixel is hole if any hole pixel falls into its area, so no hole
    (however thin) is lost at the smaller size."""
    area = PIL.Image.fromarray(mask.astype(np.float32)).resize(size, PIL.Image.BOX)
    return np.asarray(area) > 0


def inpaint_one(
    pipe: "AsukaInpaintPipeline",
    image: PIL.Image.Image,
    mask: np.ndarray,
    steps: int,
    seed: int,
    guidance_scale: float = 1.0,
    paste_back: bool | None = None,
    max_side: int | None = None,
    call_kwargs: dict | None = None,
) -> PIL.Image.Image:
    """Inpaint one RGB image with a bool mask (True = hole; or grey values in [0, 1]); the result has the input's
    size (the pipelines keep it).

    ``paste_back`` None leaves the pipeline's default (on; off under ASUKA-FLUX's ``recipe="official"``). An image
    whose longer side exceeds ``max_side`` is inpainted at that size and the result (Lanczos) pasted into the hole
    of the full-size input. ``call_kwargs`` go to the pipeline as they are (FLUX's ``guidance``, LAR-Gen's
    ``prompt`` and subject, ...).
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    size = working_size(image.size, max_side)
    work_image, work_mask = image, mask
    if size != image.size:
        work_image, work_mask, paste_back = image.resize(size, PIL.Image.LANCZOS), shrink_mask(mask, size), True
    out = pipe(
        work_image,
        work_mask.astype(np.float32),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance_scale),
        generator=generator,
        output_type="pil",
        **({} if paste_back is None else {"paste_back": paste_back}),
        **(call_kwargs or {}),
    ).images[0]
    if out.size != image.size:  # inpainted at max_side: pasted into the full-size input's hole
        out = out.resize(image.size, PIL.Image.LANCZOS)
        hole = mask if mask.shape == (image.height, image.width) else np.asarray(
            PIL.Image.fromarray(mask).resize(image.size, PIL.Image.NEAREST)
        )
        out = PIL.Image.fromarray(np.where(hole[..., None], np.asarray(out), np.asarray(image)))
    return out


def _max_side(cfg: DictConfig) -> int | None:
    value = cfg.get("max_side")
    if not is_given(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 64:
        raise ConfigError("max_side", f"{value!r}: expected an integer >= 64, or null for no limit")
    return value


def check_sizes(pairs: list[tuple[Path, Path, Path]], max_side: int | None, downscale: bool) -> list[tuple[int, int]]:
    """The (width, height) of every input image, read from the file headers before any model loads; images larger
    than ``max_side`` are refused all at once unless ``downscale`` (a 4000x3000 photo at full size took > 15 min)."""
    sizes = [image_size(image) for image, _, _ in pairs]
    big = [f"{image.name} ({w}x{h})" for (image, _, _), (w, h) in zip(pairs, sizes)
           if max_side is not None and max(w, h) > max_side]
    if big and not downscale:
        shown = ", ".join(big[:10]) + (f", ... ({len(big)} in all)" if len(big) > 10 else "")
        raise ConfigError("max_side", f"{shown}: longer side above max_side={max_side}, far beyond the 512 px "
                                      "SD-1.5 works at (slow, memory-hungry, out of distribution); give downscale=true "
                                      "to inpaint at max_side and paste the result into the full-size image, or "
                                      "max_side=null to run at full size")
    return sizes


def check_outputs_and_masks(pairs: list[tuple[Path, Path, Path]], soft: bool) -> None:
    """Before any model loads: every output path writable as an image (a known extension, not a folder) and every
    mask readable, so that a bad file never stops a folder run after hours of work. (A rerun recomputes every
    image: an existing output may come from other settings.)"""
    for _, mask, out in pairs:
        if out.is_dir():
            raise ConfigError("out", f"{out} is a folder; give an image file name (or out_dir= for folders)")
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            raise ConfigError("out", f"{out}: give an image file name ending in one of "
                                     f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
        load_mask(mask, soft=soft)


def inpaint(cfg: DictConfig) -> list[Path]:
    """Inpaint every (image, mask) pair of the config with seed ``cfg.seed``; returns the written files."""
    pairs = _pairs(cfg)
    max_side = _max_side(cfg)
    downscale = bool(cfg.get("downscale", False))
    sizes = check_sizes(pairs, max_side, downscale)
    check_outputs_and_masks(pairs, soft=str(cfg.get("recipe") or "ours") == "official")
    force_cpu = bool(cfg.get("trainer", {}).get("cpu", False))
    device = torch.device("cuda" if torch.cuda.is_available() and not force_cpu else "cpu")
    steps = int(cfg.get("steps", 50))
    pipe = None
    written = []
    for k, ((image_path, mask_path, out_path), size) in enumerate(zip(pairs, sizes), start=1):
        image = load_image(image_path)
        mask = load_mask(mask_path, soft=str(cfg.get("recipe") or "ours") == "official")
        if pipe is None:  # after the first files are read, so a bad input fails fast, before any model loads
            pipe = _pipeline(cfg, device)
            pipe.set_progress_bar_config(leave=False, desc="steps")
        work = working_size(size, max_side if downscale else None)
        at = f", inpainted at {work[0]}x{work[1]} and pasted back" if work != size else ""
        print(f"[inpaint {k}/{len(pairs)}] {image_path.name}: {size[0]}x{size[1]}{at}, {steps} steps", flush=True)
        result = inpaint_one(
            pipe, image, mask, steps, cfg.get("seed", 0), cfg.get("guidance_scale", 1.0),
            cfg.get("paste_back"), max_side if downscale else None,
            flux_kwargs(cfg.method.name, cfg.get("guidance"), cfg.get("condition_weight")),
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            result.save(out_path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{out_path}: cannot write ({exc})") from None
        written.append(out_path)
    if len(pairs) == 1:
        print(f"wrote {written[0]}")
    else:
        print(f"wrote {len(written)} images to {cfg.out_dir}")
    return written
