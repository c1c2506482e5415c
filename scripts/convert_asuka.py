"""Convert the released ASUKA (FLUX.1-Fill) files: python scripts/convert_asuka.py src=DIR out=DIR."""
import hydra
from omegaconf import DictConfig

from asuka.models.convert.released import convert_asuka
from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="convert_asuka")
def main(cfg: DictConfig) -> None:
    run(convert_asuka, cfg)


if __name__ == "__main__":
    main()
