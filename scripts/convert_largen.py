"""Convert the released LAR-Gen checkpoint: python scripts/convert_largen.py src=largen_ckpt_s22k.pth out=DIR."""
import hydra
from omegaconf import DictConfig

from asuka.models.largen.released import convert_largen
from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="convert_largen")
def main(cfg: DictConfig) -> None:
    run(convert_largen, cfg)


if __name__ == "__main__":
    main()
