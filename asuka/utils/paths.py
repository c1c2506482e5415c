"""One rule for paths named by data files or item names: they resolve inside their root (issue 22 item 5).

A benchmark line, manifest entry or item name such as ``/abs/x`` or ``../../x`` must neither make a reader open a
file outside its dataset root nor make a writer write outside its run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from asuka.utils.errors import DataError


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative``, or a one-line DataError naming ``what`` when it is absolute or escapes ``root``."""
    rel = str(relative)
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if os.path.isabs(rel) or (path != base and base not in path.parents):
        raise DataError(f"{what}: {rel!r} must be a path inside {root} (no absolute path, no '..' out of it)")
    return Path(root) / rel
