"""Stage-3 offline latent augmentation cache. Usage: python scripts/make_latent_aug.py [key=value ...]
(multi-GPU: accelerate launch scripts/make_latent_aug.py ...; a rerun completes only the missing shards)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_latent_aug")
def main(cfg: DictConfig) -> None:
    from asuka.training.latent_aug import build_latent_cache

    summary = run(build_latent_cache, cfg)
    if "shards" in summary:  # the main process reports for all ranks
        print(f"latent cache {summary['out']}: {summary['shards']} shards, {summary['written']} written by rank 0, "
              f"{summary['missing']} unreadable images")


if __name__ == "__main__":
    main()
