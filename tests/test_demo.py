"""The demo grid (``python -m asuka.demo``) names its rows inside the picture (issue 12, item 10)."""
from __future__ import annotations

import numpy as np
from conftest import compose_config
from PIL import Image

from asuka.demo import LABEL_WIDTH, ROW_LABELS, demo_grid
from asuka.pipelines.build import build_pipeline


def test_demo_grid_has_a_label_for_every_row(tmp_path) -> None:
    pipe = build_pipeline(compose_config("inpaint", ["model=tiny"]), random_decoder=True)
    pipe.save_pretrained(tmp_path / "pipeline")
    pipe.mae.save_pretrained(tmp_path / "mae" / "final" / "mae")
    grid = np.asarray(Image.open(demo_grid(tmp_path, resolution=32, steps=2)))
    rows = len(ROW_LABELS)
    assert grid.shape[0] == rows * 32 and (grid.shape[1] - LABEL_WIDTH) % 32 == 0
    column = grid[:, :LABEL_WIDTH].min(axis=2)  # white but for the text
    inked = [(column[i * 32:(i + 1) * 32] < 128).sum() for i in range(rows)]
    assert all(n > 20 for n in inked), inked  # every row has its label
    shapes = [column[i * 32:(i + 1) * 32] < 128 for i in range(rows)]
    assert len({s.tobytes() for s in shapes}) == rows  # and the labels differ
