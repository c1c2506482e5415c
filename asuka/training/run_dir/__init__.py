"""The one owner of a training run folder: its layout (``layout.py``), the checks before a run starts (``guard.py``),
the one writer (``lock.py``), atomic checkpoints with rotation and trash (``checkpoint.py``) and the run's records
(``info.py``). The engine reaches all of it through ``RunFolder``."""
from asuka.training.run_dir.checkpoint import TrainingParts
from asuka.training.run_dir.folder import RunFolder
from asuka.training.run_dir.layout import RunLayout

__all__ = ["RunFolder", "RunLayout", "TrainingParts"]
