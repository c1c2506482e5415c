"""Compare finished eval runs of several methods on the same items: report.html + report.md with tables, plots and
image grids. Usage: python scripts/compare.py runs=[outputs/eval/a,outputs/eval/b] out=outputs/compare/x
"""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="compare")
def main(cfg: DictConfig) -> None:
    from asuka.report.compare import compare

    run(compare, cfg)


if __name__ == "__main__":
    main()
