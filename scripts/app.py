"""The interactive demo: python scripts/app.py [app.port=7860 app.host=127.0.0.1 ...] (README "The interactive demo").
With no arguments it serves the tiny random demo models, offline."""
import os

import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports


@hydra.main(version_base="1.3", config_path="../configs", config_name="app")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from asuka.app.page import launch

    run(lambda c: launch(c, list(HydraConfig.get().overrides.task)), cfg)


if __name__ == "__main__":
    main()
