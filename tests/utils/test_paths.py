"""``inside``: the one rule for paths named by data files and item names (issue 22 item 5)."""
from __future__ import annotations

import pytest

from asuka.utils.errors import DataError
from asuka.utils.paths import inside


def test_inside_keeps_relative_paths_and_refuses_escapes(tmp_path):
    assert inside(tmp_path, "a/b.png", "x") == tmp_path / "a" / "b.png"
    assert inside(tmp_path, "a/../b.png", "x") == tmp_path / "a/../b.png"  # stays inside: allowed
    for bad in ("../x.png", "/../../x.png", str(tmp_path.parent / "x.png"), "a/../../x.png"):
        with pytest.raises(DataError, match=r"^benchmark.jsonl:3: scene: .* must be a path inside"):
            inside(tmp_path, bad, "benchmark.jsonl:3: scene")
