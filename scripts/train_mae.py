"""Stage 1: fine-tune the MAE prior on inpainting masks. Usage: python scripts/train_mae.py [key=value ...]"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_mae")
def main(cfg: DictConfig) -> None:
    from asuka.training.mae import train

    run(train, cfg)


if __name__ == "__main__":
    main()
