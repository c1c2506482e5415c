"""make gpu-kit: python scripts/gpu_kit.py [out=.gpu-kit] -- the wheels a bare GPU machine lacks (docs/benchmarks.md)."""
import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run


@hydra.main(version_base="1.3", config_path="../configs", config_name="gpu_kit")
def main(cfg: DictConfig) -> None:
    from asuka.benchmark.gpu_kit import build_kit

    run(build_kit, cfg)


if __name__ == "__main__":
    main()
