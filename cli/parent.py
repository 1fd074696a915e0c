"""The parts ``radio up`` starts die with it, however it dies.

``radio up`` stops its children on every signal it can catch; a ``kill -9`` it cannot catch.
So each child asks the kernel (Linux ``prctl(PR_SET_PDEATHSIG)``) for SIGTERM when its parent
dies, and stops as it would on Ctrl-C: the broker closes its connections and stops Mosquitto,
the bridge stops its workers. ``radio up`` names itself in ``RADIO_PARENT`` for that.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Final

PARENT_ENVIRONMENT: Final = "RADIO_PARENT"
_PR_SET_PDEATHSIG: Final = 1


def follow_parent() -> None:
    """If ``radio up`` started this process, receive SIGTERM when it dies (Linux only)."""
    parent = os.environ.pop(PARENT_ENVIRONMENT, None)  # grandchildren follow their own parent
    if parent is None or not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
