"""Inpaint images. Usage: python scripts/inpaint.py pipeline=DIR image=PATH mask=PATH out=PATH [steps=50 seed=0]"""
import sys

import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="inpaint")
def main(cfg: DictConfig) -> None:
    if cfg.method.name == "largen":
        from asuka.pipelines.largen_build import inpaint_largen as inpaint
    else:
        from asuka.pipelines.inpaint_files import inpaint

    run(inpaint, cfg)


if __name__ == "__main__":
    from asuka.pipelines.inpaint_files import alias_mask_argument

    sys.argv = alias_mask_argument(sys.argv)  # `mask=PATH` is the mask file, not the `mask` config group
    main()
