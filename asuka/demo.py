"""The picture at the end of ``make demo``: one column per sample image, one row per step of the chain.

Rows: image, mask, masked image, the stage-1 MAE's reconstruction, ASUKA decoded by the SD VAE, ASUKA decoded by
the stage-3 decoder, and the absolute colour error of each decode in the ring around the hole. Usage:
``python -m asuka.demo outputs/demo``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from asuka.data.color import error_map_to_image, ring_error_map
from asuka.data.datasets import EvalDataset, build_image_source, collate
from asuka.models.mae import MaskedAutoencoderViT
from asuka.pipelines.build import load_pipeline
from asuka.training.run_folder import make_grid


def demo_grid(out: Path, resolution: int = 64, steps: int = 10) -> Path:
    """Write ``out/demo_grid.png`` from the demo's run folders (``mae/``, ``pipeline/``)."""
    repo = Path(__file__).resolve().parents[1]
    samples = repo / "data" / "samples"
    items = build_image_source({"name": "samples", "root": str(samples), "mask_root": str(samples / "masks")}, "eval")
    dataset = EvalDataset(items, resolution)
    batch = collate([dataset[i] for i in range(len(dataset))])
    image, mask = batch["image"], batch["mask"]
    mae = MaskedAutoencoderViT.from_pretrained(str(out / "mae" / "final" / "mae")).eval()
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
    path = out / "demo_grid.png"
    make_grid(rows).save(path)
    return path


if __name__ == "__main__":
    print(demo_grid(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/demo")))
