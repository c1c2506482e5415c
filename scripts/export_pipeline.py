"""Write an AsukaInpaintPipeline folder. Usage: python scripts/export_pipeline.py mae=... alignment=... out=DIR"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="export_pipeline")
def main(cfg: DictConfig) -> None:
    if cfg.method.name == "largen":
        from asuka.pipelines.largen_build import export_largen_pipeline as export_pipeline
    else:
        from asuka.pipelines.build import export_pipeline

    run(export_pipeline, cfg)


if __name__ == "__main__":
    main()
