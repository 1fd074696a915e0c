"""`radio` commands run as a user types them in a folder: its own process, this folder's state.

The environment is the test run's minus the variables that would point a command at another
configuration, registry or key, so that what a command finds is what the folder holds.

``radio_main`` runs a short command through the command's own ``main(argv)`` in the test
process instead: for the tests whose subject is what the command changes, not the command line.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from radio.cli.main import main

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


_ONE_AT_A_TIME = threading.Lock()
"""``radio_main`` swaps the process's ``sys.stdout`` and ``sys.stderr``: two calls at once would mix."""


def radio_main(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """``radio ARGS`` run by the command's ``main(argv)`` in this process, its output captured.

    The same parser, handlers and exit statuses as ``python -m radio ARGS`` (a ``SystemExit``,
    argparse's refusals and ``--help``, gives the return code), in the test's cwd and
    environment, without an interpreter start (about 0.1 s of CPU) per command. So a key added,
    edited or revoked goes through the very code the command runs: ``keys.toml`` rewritten, the
    change audited, the running servers' confirmations awaited. What only a process can show
    (the entry point, exit on an uncaught error, signals, the environment it inherits, what
    ``ps`` sees) is tested with ``radio_in`` or ``Home.radio``; an uncaught exception here fails
    the test with its traceback.

    Warnings the command logs reach its stderr, as Python's last-resort handler writes them in a
    process that sets up no logging. The call must leave the process as it found it
    (environment, cwd, logging handlers): asserted after each call.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with _ONE_AT_A_TIME:
        environment, cwd, handlers = dict(os.environ), Path.cwd(), list(logging.getLogger().handlers)
        with (
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            _warnings_of_this_thread(stderr),
        ):
            try:
                code: object = main(list(args))
            except SystemExit as exc:
                code = exc.code
        assert dict(os.environ) == environment, "radio_main changed the environment"
        assert Path.cwd() == cwd, "radio_main changed the working directory"
        assert logging.getLogger().handlers == handlers, "radio_main left a logging handler"
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): Python prints it and exits 1
        stderr.write(f"{code}\n")
        code = 1
    result = subprocess.CompletedProcess(["radio", *args], code, stdout.getvalue(), stderr.getvalue())
    if check:
        result.check_returncode()
    return result


@contextlib.contextmanager
def _warnings_of_this_thread(stream: io.StringIO) -> Iterator[None]:
    """Records of WARNING and up logged by this thread, as ``logging.lastResort`` writes them."""
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.addFilter(lambda record: record.thread == threading.get_ident())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


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
    _pump(process, lines.put)
    return lines


def listen_lines(folder: Path, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[dict[str, Any]]]:
    """`radio listen ARGS` in a folder, and the JSON lines it prints as they come."""
    process = started_in(folder, "listen", *args)
    lines: queue.Queue[dict[str, Any]] = queue.Queue()
    _pump(process, lambda line: lines.put(json.loads(line)))
    return process, lines


def _pump(process: subprocess.Popen[str], take: Callable[[str], None]) -> None:
    """Hand each line the process prints to ``take``, on a thread, until its stdout ends or is closed.

    A test that stops the process reads the rest of its output (``communicate``), which closes the
    stream under this thread: that ends the reading, not the test. A line ``take`` refuses (not
    JSON) still fails the test, as the thread's exception.
    """
    stdout = process.stdout
    assert stdout is not None

    def run() -> None:
        try:
            for line in stdout:
                take(line)
        except ValueError as exc:
            if isinstance(exc, json.JSONDecodeError) or not stdout.closed:
                raise

    thread = threading.Thread(target=run, daemon=True)
    _PUMPS[process.pid] = thread
    thread.start()


_PUMPS: dict[int, threading.Thread] = {}
"""The thread reading each process's stdout (``_pump``), by pid: ``stop`` waits for it."""


def stop(process: subprocess.Popen[str], timeout: float = 20) -> tuple[str, str]:
    """Ctrl-C, then its exit, then what is left of its output (``communicate``).

    The thread reading its stdout, if any, reads it to the end first: two readers of one pipe
    would split a line between them, and a line cut in two is not JSON.
    """
    process.send_signal(signal.SIGINT)
    process.wait(timeout)
    pump = _PUMPS.pop(process.pid, None)
    if pump is not None:
        pump.join(timeout)
    return process.communicate(timeout=timeout)
