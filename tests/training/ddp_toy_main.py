"""Run by test_distributed.py under torchrun: train the toy stage on 2 CPU processes and dump per-rank facts."""
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from toy_stage import ToyStage, toy_config  # noqa: E402

from asuka.training.engine import Trainer  # noqa: E402

run_dir = Path(sys.argv[1])
trainer = Trainer(toy_config(max_steps=2, ema={"enabled": False, "decay": 0.9}), ToyStage, run_dir)
trainer.fit()
rank = int(os.environ["RANK"])
net = trainer.stage.trainable["net"]
weights = {k: v.tolist() for k, v in getattr(net, "module", net).state_dict().items()}
(run_dir / f"rank{rank}.json").write_text(json.dumps({"seen": trainer.stage.seen, "weights": weights}))
torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None
