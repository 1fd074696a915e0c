"""`radio` commands run as a user types them in a folder: its own process, this folder's state.

The environment is the test run's minus the variables that would point a command at another
configuration, registry or key, so that what a command finds is what the folder holds.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Final

RADIO: Final = (sys.executable, "-m", "radio")
ANY_PORTS: Final = ("--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0")
"""`radio up`'s three doors, each on a port the system picks."""
BROKER_ON_ANY_PORTS: Final = ("broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0")
ELSEWHERE: Final = ("RADIO_CONFIG", "RADIO_KEYS", "RADIO_KEY", "RADIO_BRIDGE_KEY")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without a say on which configuration or key a command uses."""
    return {**{k: v for k, v in os.environ.items() if k not in ELSEWHERE}, **extra}


def radio_in(folder: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A `radio` command run in a folder that is expected to end by itself; its output captured."""
    return subprocess.run(
        [*RADIO, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
        check=False,
    )


def started_in(folder: Path | None, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """A `radio` command (a server, a listener) started in a folder (None: here), its output on pipes.

    ``popen`` overrides a default (``stderr``, ``env``) or adds an option of ``subprocess.Popen``.
    """
    options: dict[str, Any] = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "text": True,
        "env": clean_env(),
        **popen,
    }
    return subprocess.Popen([*RADIO, *args], cwd=folder, **options)


def read_banner(process: subprocess.Popen[str]) -> str:
    """What a server prints up to its "Ctrl-C" line (all it printed, if it ends before)."""
    banner = ""
    assert process.stdout is not None
    for line in process.stdout:
        banner += line
        if "Ctrl-C" in line:
            break
    return banner


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The lines a process prints, as they come, read on a thread of their own."""
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    return lines


def listen_lines(folder: Path, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[dict[str, Any]]]:
    """`radio listen ARGS` in a folder, and the JSON lines it prints as they come."""
    process = started_in(folder, "listen", *args)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()
    stdout = process.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(json.loads(x)) for x in stdout], daemon=True).start()
    return process, lines
