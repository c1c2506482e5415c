"""Write a fixed set of masks: python scripts/make_masks.py n=N size=S seed=K out=DIR [mask=eval] [format=bank].

DIR/00000.png... (8-bit, 255 = hole) and DIR/manifest.jsonl ({"file", "kind", "hole_ratio", "generator_version"} per
mask), or with format=bank a memory-mapped mask bank (masks.npy, kinds.npy, index.json) for mask.source=bank. Mask i
comes from sample_rng(seed, 0, i): the same seed rewrites identical files.
"""
import hydra

from asuka.data.mask_files import make_masks
from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_masks")
def main(cfg) -> None:
    run(make_masks, cfg)


if __name__ == "__main__":
    main()
