"""LAR-Gen training. Usage: python scripts/train_largen.py largen.stage=assign|refine [key=value ...]"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_largen")
def main(cfg: DictConfig) -> None:
    from asuka.training.largen import train

    run(train, cfg)


if __name__ == "__main__":
    main()
