"""Run by test_run_guard.py under a launcher: a long, slow toy run that writes its PID once training has started."""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from toy_stage import ToyStage, toy_config  # noqa: E402

from asuka.training.engine import fit  # noqa: E402

run_dir = Path(sys.argv[1])


class SlowToyStage(ToyStage):
    def training_step(self, batch, step):
        if step == 1:
            (run_dir / "pid").write_text(str(os.getpid()))
        time.sleep(0.05)
        return super().training_step(batch, step)


out = fit(toy_config(max_steps=100000, checkpoint_every=100000, log_every=1000), SlowToyStage, run_dir)
(run_dir / "exit.txt").write_text(f"{out['step']} {out['finished']}")
