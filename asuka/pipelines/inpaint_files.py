"""``scripts/inpaint.py``: inpaint one image or a folder of images with an exported (or demo) ASUKA pipeline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from asuka.data.images import IMAGE_EXTENSIONS, list_images, load_image, load_mask
from asuka.utils.errors import ConfigError, DataError

if TYPE_CHECKING:
    from asuka.pipelines.pipeline_asuka_inpaint import AsukaInpaintPipeline

# diffusers and the models are imported only once the inputs are read, so a bad file is reported at once.


def _given(value: object) -> bool:
    return value is not None and str(value) not in ("", "None", "null")


def alias_mask_argument(argv: list[str]) -> list[str]:
    """``mask=PATH`` on the command line means the mask file, but Hydra reads ``mask=`` as the ``mask`` config group
    (the training masks). Rewrite it to ``mask_file=PATH`` before Hydra parses the arguments."""
    return ["mask_file=" + a[len("mask="):] if a.startswith("mask=") else a for a in argv]


def _pairs(cfg: DictConfig) -> list[tuple[Path, Path, Path]]:
    """(image, mask, output) triples: one from ``image/mask/out``, or a folder matched by file stem."""
    single = [_given(cfg.get(k)) for k in ("image", "mask_file", "out")]
    folder = [_given(cfg.get(k)) for k in ("image_dir", "mask_dir", "out_dir")]
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
    from asuka.pipelines.build import build_pipeline, is_tiny, load_pipeline

    if _given(cfg.get("pipeline")):
        return load_pipeline(str(cfg.pipeline), device=device, dtype=cfg.get("dtype"))
    if not is_tiny(cfg):  # building from the stage folders is scripts/export_pipeline.py's job
        raise ConfigError("pipeline", "give an exported pipeline folder (pipeline=DIR), or use experiment=demo")
    return build_pipeline(cfg, device=device)


def inpaint_one(
    pipe: "AsukaInpaintPipeline",
    image: PIL.Image.Image,
    mask: np.ndarray,
    steps: int,
    seed: int,
    guidance_scale: float = 1.0,
    paste_back: bool = False,
) -> PIL.Image.Image:
    """Inpaint one RGB image with a bool mask (True = hole); the result has the input's size.

    The pipeline works at the size rounded down to a multiple of 8; the result is resized back (Lanczos) and, with
    ``paste_back``, the known pixels of the original are composited at full resolution.
    """
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    out = pipe(
        image,
        mask.astype(np.float32),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance_scale),
        generator=generator,
        output_type="pil",
        paste_back=paste_back,
    ).images[0]
    if out.size != image.size:
        out = out.resize(image.size, PIL.Image.LANCZOS)
        if paste_back:
            hole = mask if mask.shape == (image.height, image.width) else np.asarray(
                PIL.Image.fromarray(mask).resize(image.size, PIL.Image.NEAREST)
            )
            out = PIL.Image.fromarray(np.where(hole[..., None], np.asarray(out), np.asarray(image)))
    return out


def inpaint(cfg: DictConfig) -> list[Path]:
    """Inpaint every (image, mask) pair of the config with seed ``cfg.seed``; returns the written files."""
    pairs = _pairs(cfg)
    force_cpu = bool(cfg.get("trainer", {}).get("cpu", False))
    device = torch.device("cuda" if torch.cuda.is_available() and not force_cpu else "cpu")
    pipe = None
    written = []
    for image_path, mask_path, out_path in tqdm(pairs, desc="inpaint", disable=len(pairs) < 2):
        image = load_image(image_path)
        mask = load_mask(mask_path)
        if pipe is None:  # after the first files are read, so a bad input fails fast, before any model loads
            pipe = _pipeline(cfg, device)
            pipe.set_progress_bar_config(disable=True)
        result = inpaint_one(
            pipe, image, mask, cfg.get("steps", 50), cfg.get("seed", 0), cfg.get("guidance_scale", 1.0),
            bool(cfg.get("paste_back", False)),
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
