"""python scripts/gpu_figures.py [device=cuda|cpu] [model=real|tiny]: every missing GPU figure in one call, into
$OUT or outputs/gpu_figures/<stamp> (scripts/gpu_figures.sh installs the GPU kit first; docs/benchmarks.md)."""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run

# configs/model/ is a Hydra group: `model=` is this script's plain key bench_model (as in scripts/benchmark.py).
sys.argv = [f"bench_model={a[len('model='):]}" if a.startswith("model=") else a for a in sys.argv]


@hydra.main(version_base="1.3", config_path="../configs", config_name="gpu_figures")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from asuka.benchmark.figures import run_figures

    run(lambda c: run_figures(c, Path(HydraConfig.get().runtime.output_dir)), cfg)


if __name__ == "__main__":
    main()
