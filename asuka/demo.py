"""The picture at the end of ``make demo``: one column per sample image, one row per step of the chain.

Rows: image, mask, masked image, the stage-1 MAE's reconstruction, ASUKA decoded by the SD VAE, ASUKA decoded by
the stage-3 decoder, and the absolute colour error of each decode in the ring around the hole. Usage:
``python -m asuka.demo outputs/demo``.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from asuka.data.color import error_map_to_image, ring_error_map
from asuka.data.datasets import EvalDataset, build_image_source, collate
from asuka.models.mae import MaskedAutoencoderViT
from asuka.pipelines.build import load_pipeline
from asuka.training.reporting import make_grid
from asuka.training.run_dir import RunLayout

ROW_LABELS = ("image", "mask", "masked image", "MAE stage 1", "ASUKA, SD VAE", "ASUKA, decoder",
              "ring error, SD VAE", "ring error, decoder")
LABEL_WIDTH = 110  # our choice: pixels of the label column, room for the longest label in PIL's default font


def label_rows(grid: Image.Image, labels: Sequence[str], width: int = LABEL_WIDTH) -> Image.Image:
    """``grid`` with a white column on its left naming each of its equally high rows, so the picture explains itself
    wherever it is shown."""
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    row_height = grid.height / len(labels)
    for i, label in enumerate(labels):
        top, bottom = draw.textbbox((0, 0), label, font=font)[1::2]
        draw.text((4, round((i + 0.5) * row_height - (top + bottom) / 2)), label, fill="black", font=font)
    return out


def largen_row(folder: Path, image: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Each sample's hole filled by the demo LAR-Gen pipeline with the shipped red ball as subject and prompt."""
    from asuka.data.images import load_image, load_mask
    from asuka.pipelines.largen_build import load_largen_pipeline
    from asuka.pipelines.pipeline_largen import subject_tensor

    shard = Path(__file__).resolve().parents[1] / "data" / "largen_samples" / "shard_00000"
    pipe = load_largen_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    subject = subject_tensor(load_image(shard / "0000000_00_subject.png"),
                             load_mask(shard / "0000000_00_subject_mask.png"), image.shape[-1])
    outs = [pipe.sample(image[i : i + 1], mask[i : i + 1], "a red ball", subject, num_inference_steps=steps,
                        generator=torch.Generator().manual_seed(i)) for i in range(len(image))]
    return torch.cat(outs) * mask + image * (1 - mask)


def demo_grid(out: Path, resolution: int = 64, steps: int = 10) -> Path:
    """Write ``out/demo_grid.png`` from the demo's run folders (``mae/``, ``pipeline/``)."""
    repo = Path(__file__).resolve().parents[1]
    samples = repo / "data" / "samples"
    items = build_image_source({"name": "samples", "root": str(samples), "mask_root": str(samples / "masks")}, "eval")
    dataset = EvalDataset(items, resolution)
    batch = collate([dataset[i] for i in range(len(dataset))])
    image, mask = batch["image"], batch["mask"]
    mae = MaskedAutoencoderViT.from_pretrained(str(RunLayout(out / "mae").final / "mae")).eval()
    pipe = load_pipeline(str(out / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    decoder = pipe.decoder

    def inpaint(with_decoder: bool) -> torch.Tensor:
        pipe.decoder = decoder if with_decoder else None
        generator = [torch.Generator().manual_seed(i) for i in range(len(image))]
        result = pipe(image=(image + 1) / 2, mask_image=mask, num_inference_steps=steps, generator=generator,
                      output_type="pt").images
        return result * 2 - 1

    with torch.no_grad():
        recon = torch.nn.functional.interpolate(mae.reconstruct(image, mask), size=image.shape[-2:], mode="bilinear")
        sd_decoded, asuka_decoded = inpaint(False), inpaint(True)
    rows = [image, mask.expand_as(image) * 2 - 1, image * (1 - mask), recon, sd_decoded, asuka_decoded]
    rows += [error_map_to_image(ring_error_map(x, image, mask)) for x in (sd_decoded, asuka_decoded)]
    labels = ROW_LABELS
    if (out / "largen_pipeline").is_dir():  # the LAR-Gen chain of make demo
        rows.append(largen_row(out / "largen_pipeline", image, mask, steps))
        labels = (*ROW_LABELS, "LAR-Gen: text+subject")
    path = out / "demo_grid.png"
    label_rows(make_grid(rows), labels).save(path)
    return path


if __name__ == "__main__":
    print(demo_grid(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")))
