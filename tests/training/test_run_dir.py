"""One owner of the run folder (issue 23): the names under a training run folder are spelled in
``asuka/training/run_dir/layout.py`` only, and the engine's run folder is where ``RunLayout`` says."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

from asuka.training.engine import fit
from asuka.training.run_dir import RunLayout

sys.path.insert(0, str(Path(__file__).parent))
from toy_stage import ToyStage, toy_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LAYOUT = REPO / "asuka" / "training" / "run_dir" / "layout.py"
RUN_FOLDER_NAMES = {"final", "checkpoints", "metrics.jsonl", "run_info.json", "abandoned", "trainer_state.json"}
# Same words, other folders: torch.hub's own $TORCH_HOME/hub/checkpoints.
OTHER_MEANINGS = {REPO / "asuka" / "utils" / "weights.py"}


def test_run_folder_names_are_spelled_only_in_the_layout() -> None:
    spelled = []
    for path in sorted([*(REPO / "asuka").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        if path in OTHER_MEANINGS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and node.value in RUN_FOLDER_NAMES:
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    layout = [s for s in spelled if s.startswith(str(LAYOUT.relative_to(REPO)))]
    assert len(layout) == len(RUN_FOLDER_NAMES)  # each name once, there
    assert sorted(set(spelled) - set(layout)) == []


def test_the_engine_writes_where_the_layout_says(tmp_path: Path) -> None:
    fit(toy_config(max_steps=4, keep_checkpoints=1), ToyStage, tmp_path)
    run = RunLayout(tmp_path)
    assert run.config.is_file() and run.run_info.is_file() and run.metrics.is_file()
    assert run.val_grid(4).is_file()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [run.checkpoint(4).name]
    assert (run.final / "net").is_dir()
