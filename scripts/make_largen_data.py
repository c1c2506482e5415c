"""LAR-Gen data engine. Usage: python scripts/make_largen_data.py paths.images=DIR out=DIR [key=value ...]
(multi-GPU: accelerate launch scripts/make_largen_data.py ...; a rerun completes only the missing shards)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_largen_data")
def main(cfg: DictConfig) -> None:
    from asuka.data.largen_engine.run import mine, report

    summary = run(mine, cfg)
    if "shards" in summary:  # the main process reports for all ranks
        print(report(summary))


if __name__ == "__main__":
    main()
