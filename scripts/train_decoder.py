"""Stage 3: train the mask-conditioned decoder. Usage: python scripts/train_decoder.py [key=value ...]
(first build the latent-augmentation cache with scripts/make_latent_aug.py, or set decoder_train.latent_aug_prob=0)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="train_decoder")
def main(cfg: DictConfig) -> None:
    from asuka.training.decoder import train

    run(train, cfg)


if __name__ == "__main__":
    main()
