"""Stage 2: train the alignment module on frozen SD-1.5 inpainting. Usage: python scripts/train_align.py [key=value ...]"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_align")
def main(cfg: DictConfig) -> None:
    from asuka.training.align import train

    run(train, cfg)


if __name__ == "__main__":
    main()
