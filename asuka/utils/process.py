"""The process's tie to its launcher: on Linux, SIGTERM when the parent dies (``PR_SET_PDEATHSIG``)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

LAUNCHED = "LOCAL_RANK"  # set by torchrun and accelerate launch for each worker they start


def term_when_parent_dies(enable: bool) -> None:
    """Ask the kernel to send SIGTERM to this process when its parent exits (or stop asking). ``accelerate launch``
    with one process exits at once on SIGTERM without forwarding it, and a SIGKILLed torchrun forwards nothing:
    their workers then get SIGTERM this way instead of running on as orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM) if enable else 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tie_worker_to_launcher() -> None:
    """First thing in a worker a launcher started: ask for the parent-death signal (until the training loop installs
    its own SIGTERM handler, SIGTERM simply ends the process), and end at once if the launcher is already gone."""
    if LAUNCHED not in os.environ:
        return
    term_when_parent_dies(True)
    if os.getppid() == 1:  # re-parented to init: the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class SigtermFlag:
    """Turns SIGTERM (what schedulers send before a kill, or the kernel when the launcher dies) into a flag that a
    loop checks after every step, so it can checkpoint and exit instead of dying mid-write."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self) -> "SigtermFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
            return self
        parent = os.getppid()
        term_when_parent_dies(True)
        if os.getppid() != parent:  # the launcher died before the request took effect
            self.received = True
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001
        self.received = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            term_when_parent_dies(False)
            signal.signal(signal.SIGTERM, self._previous)
