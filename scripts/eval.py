"""Evaluate a method on a dataset (FID, U-IDS, P-IDS, LPIPS, PSNR, SSIM, colour error).

Usage: python scripts/eval.py [dataset=misato] [method=sd|sd_text|asuka|predictions predictions_dir=...] [key=value ...]
"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from asuka.eval.run import evaluate

    run(evaluate, cfg)


if __name__ == "__main__":
    main()
