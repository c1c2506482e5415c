"""Stage-3 offline latent augmentation cache. Usage: python scripts/make_latent_aug.py [key=value ...]
(multi-GPU: accelerate launch scripts/make_latent_aug.py ...; a rerun completes only the missing shards)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_latent_aug")
def main(cfg: DictConfig) -> None:
    from asuka.training.latent_aug import build_latent_cache

    print(run(build_latent_cache, cfg))


if __name__ == "__main__":
    main()
