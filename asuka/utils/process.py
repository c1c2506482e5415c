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
