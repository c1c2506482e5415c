"""Paths: the ones named by data files or item names resolve inside their root; an output folder is writable.

A benchmark line, manifest entry or item name such as ``/abs/x`` or ``../../x`` must neither make a reader open a
file outside its dataset root nor make a writer write outside its run folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from asuka.utils.errors import ConfigError, DataError


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative``, or a one-line DataError naming ``what`` when it is absolute or escapes ``root``."""
    rel = str(relative)
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if os.path.isabs(rel) or (path != base and base not in path.parents):
        raise DataError(f"{what}: {rel!r} must be a path inside {root} (no absolute path, no '..' out of it)")
    return Path(root) / rel


def check_writable(folder: Path, key: str) -> None:
    """The output folder can be created and written (a probe file), or one line naming ``key``."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(key, f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(key, f"{folder} is not writable ({exc.strerror or exc})") from None
