"""Glue for the thin Hydra entry scripts: one-line errors for user mistakes, and a run dir shared by all ranks."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from asuka.utils.errors import AsukaError
from asuka.utils.process import tie_worker_to_launcher



def check_run_dir_argument(argv: list[str]) -> None:
    """``hydra.run.dir=DIR`` on an entry script's command line must be writable: Hydra creates it before our code
    runs and would answer a read-only folder with its own traceback. One line and exit 2 instead."""
    if not argv or Path(argv[0]).resolve().parent != Path(_repo_dir()) / "scripts":
        return
    from asuka.utils.paths import check_writable

    for arg in argv[1:]:
        if arg.startswith("hydra.run.dir="):
            try:
                check_writable(Path(os.path.expanduser(arg.split("=", 1)[1])), "hydra.run.dir")
            except AsukaError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)


tie_worker_to_launcher()  # every entry script imports this module first: a worker is tied before it loads anything


def _run_stamp() -> str:
    """A run-folder name that every rank of one launch agrees on (Hydra's ${now:} differs between ranks)."""
    if os.environ.get("ASUKA_RUN_STAMP"):
        return os.environ["ASUKA_RUN_STAMP"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("TORCHELASTIC_RUN_ID"):
        return "run-" + os.environ["TORCHELASTIC_RUN_ID"]
    if os.environ.get("SLURM_JOB_ID"):
        return "slurm-" + os.environ["SLURM_JOB_ID"]
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def _repo_dir() -> str:
    """The checkout this package is installed from (editable install), for paths to shipped data."""
    return str(Path(__file__).resolve().parents[2])


if not OmegaConf.has_resolver("run_stamp"):
    OmegaConf.register_new_resolver("run_stamp", _run_stamp, use_cache=True)
    OmegaConf.register_new_resolver("asuka_repo", _repo_dir)


def run(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Check every config value's type and range (:mod:`asuka.utils.config_schema`), then call ``fn(cfg)``; an
    AsukaError becomes one line on stderr and exit status 2."""
    from asuka.utils.config_schema import validate_config

    try:
        validate_config(cfg)
        return fn(cfg)
    except AsukaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


check_run_dir_argument(sys.argv)  # before @hydra.main creates the folder
