"""Stage-2 VAE-latent cache (optional). Usage: python scripts/make_align_latents.py paths.align_latents=DIR
[the overrides you give train_align ...]; then train with python scripts/train_align.py paths.align_latents=DIR ...
(multi-GPU: accelerate launch scripts/make_align_latents.py ...; a rerun completes only the missing shards)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="make_align_latents")
def main(cfg: DictConfig) -> None:
    from asuka.training.align_latents import build_align_latents

    summary = run(build_align_latents, cfg)
    if "shards" in summary:  # the main process reports for all ranks
        print(f"stage-2 latent cache {summary['out']}: {summary['shards']} shards, {summary['written']} written by "
              f"rank 0, {summary['missing']} samples without latents")


if __name__ == "__main__":
    main()
