"""Whether a process still runs: the test behind every file a process leaves for itself.

Shared bucket files, confirmation files and temporary files carry the pid of the process that
made them; a file whose process is gone is removed by the next one that comes across it.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts: it may not be signalled)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
