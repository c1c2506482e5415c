"""Benchmarks: python scripts/benchmark.py task=inference|train_mae|train_align|train_decoder|masks model=sd15|tiny
device=cpu|cuda size=.. steps=.. repeats=.. batch=.. dtype=auto out=FILE.json   (docs/benchmarks.md)"""
import sys

import hydra
from omegaconf import DictConfig

from asuka.utils.cli import run

COMMAND = " ".join(["python", "scripts/benchmark.py", *sys.argv[1:]])
# configs/model/ is a Hydra group, so Hydra would read `model=tiny` as configs/model/tiny.yaml; here `model` is the
# benchmark's plain key (configs/benchmark.yaml: bench_model).
sys.argv = [f"bench_model={a[len('model='):]}" if a.startswith("model=") else a for a in sys.argv]


@hydra.main(version_base="1.3", config_path="../configs", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    from asuka.benchmark import run_benchmark

    run(lambda c: run_benchmark(c, command=COMMAND), cfg)


if __name__ == "__main__":
    main()
