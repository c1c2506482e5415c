"""Convert released MAE weights into our folder format: python scripts/convert_mae.py src=FILE out=DIR [model=paper]."""
import hydra
from omegaconf import DictConfig

from asuka.models.mae_import import convert_mae
from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="convert_mae")
def main(cfg: DictConfig) -> None:
    run(convert_mae, cfg)


if __name__ == "__main__":
    main()
