"""One writer per run folder: ``<run>/.lock`` names the process (pid, host, start) that writes the folder.

Two runs started on one folder would rename each other's ``metrics.jsonl`` and replace each other's ``final/``; the
second is refused in one line instead. A lock left by a dead process is taken over with a warning: on the same host
when its pid is gone, from another host (a SLURM requeue on another node) when its heartbeat (the file's mtime,
refreshed every ``HEARTBEAT_S`` by a daemon thread of the holder) is older than ``STALE_AFTER_S``.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from asuka.training.run_dir.layout import RunLayout
from asuka.utils.errors import ConfigError

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0      # our choice
STALE_AFTER_S = 300.0   # our choice: ten missed heartbeats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # torn (a kill while it was written): nobody can hold it


def _stale(path: Path, holder: dict | None) -> bool:
    if holder is None:
        return True
    if holder.get("host") == socket.gethostname():
        return not _alive(int(holder.get("pid", -1)))
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
        return True


def acquire_run_lock(run_dir: Path) -> Path:
    """Take ``run_dir/.lock`` for this process (released at exit), or raise a ConfigError naming the live holder."""
    path = RunLayout(run_dir).lock
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder.get("pid") == mine["pid"] and holder.get("host") == mine["host"]:
                return path  # this process holds it already (a second fit() in one process: tests, notebooks)
            if not _stale(path, holder):
                raise ConfigError("hydra.run.dir", f"{run_dir} is being written by process {holder['pid']} on "
                                                   f"{holder['host']} (since {holder['started']}): one run per "
                                                   "folder at a time; wait for it, or choose another "
                                                   "hydra.run.dir") from None
            log.warning("%s: taking over the lock of a process that is gone (%s)", run_dir, holder or "torn file")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        break
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except OSError:
                return

    threading.Thread(target=heartbeat, name="run-lock-heartbeat", daemon=True).start()

    def release() -> None:
        stop.set()
        if (_holder(path) or {}).get("pid") == mine["pid"]:
            path.unlink(missing_ok=True)

    atexit.register(release)
    return path
