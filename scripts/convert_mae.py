"""Convert released MAE weights into our folder format: python scripts/convert_mae.py src=FILE out=DIR [model=paper]."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

import asuka.utils.cli  # noqa: F401  (registers the run_stamp / asuka_repo resolvers)
from asuka.models.mae_import import convert_mae


@hydra.main(version_base="1.3", config_path="../configs", config_name="convert_mae")
def main(cfg: DictConfig) -> None:
    asuka.utils.cli.run(convert_mae, cfg)


if __name__ == "__main__":
    main()
