"""The HTTP servers the door is measured under: the bridge and the bare yardstick, same settings.

- ``radio``: what ``radio bridge`` runs: gunicorn's arbiter, uvicorn event-loop workers, each
  request read whole before a thread runs Flask (``bridge/asgi.py``);
- ``sync``: gunicorn's pre-forked sync workers (``radio bridge`` before the event-loop workers);
- ``gthread``: gunicorn's threaded workers;
- ``waitress``: waitress, one process with threads (``pip install waitress``).

Every server gets the same number of worker processes (waitress: one) and threads per process
(sync workers: one, by definition).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVERS = ("radio", "sync", "gthread", "waitress")


@dataclass
class Served:
    """A running server: its process and its base URL."""

    process: subprocess.Popen[str]
    url: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    args: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start a process and wait for the line that says where it listens."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            return process, match[1]
    msg = f"{args[:3]} did not start"
    raise RuntimeError(msg)


def bench_home(home: Path) -> tuple[dict[str, str], str]:
    """A platform folder with two public networks and a key that may publish to both.

    ``bench`` keeps its last sample (``retain = true``: the embedded broker answers a publish once
    the sample is on disk); ``bench_volatile`` does not (``retain = false``: nothing to write).
    """
    (home / "radio.toml").write_text(
        "[networks.bench]\npublic = true\nretain = true\n"
        "[networks.bench_volatile]\npublic = true\nretain = false\n"
    )
    env = {**os.environ, "RADIO_CONFIG": str(home / "radio.toml")}
    key = subprocess.run(
        [sys.executable, "-m", "radio", "keys", "add", "bench", "--publish", "bench,bench_volatile"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    return env, key


def _gunicorn(app: str, worker: str, workers: int, threads: int, env: dict[str, str] | None) -> Served:
    if worker == "sync":
        threads = 1  # gunicorn turns sync workers with threads into gthread workers
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            *("--workers", str(workers), "--worker-class", worker, "--threads", str(threads)),
            *("--bind", f"127.0.0.1:{port}", "--chdir", str(HERE), "--log-level", "warning"),
            app,
        ],
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    return Served(process, f"http://127.0.0.1:{port}")


def _waitress(app: str, threads: int, env: dict[str, str] | None) -> Served:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waitress",
            *("--threads", str(threads), "--connection-limit", "2000", f"--listen=127.0.0.1:{port}"),
            *("--call", app),
        ],
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=HERE,
        text=True,
    )
    return Served(process, f"http://127.0.0.1:{port}")


def serve_bridge(
    server: str, home: Path, env: dict[str, str], mqtt_port: str, *, workers: int, threads: int
) -> Served:
    """The bridge under the named server, publishing to the broker on ``mqtt_port``."""
    if server == "radio":
        process, url = start(
            [
                *(sys.executable, "-m", "radio", "bridge", "--listen", "127.0.0.1:0"),
                *("--broker", f"mqtt://127.0.0.1:{mqtt_port}"),
                *("--workers", str(workers), "--threads", str(threads)),
            ],
            r"POST (http://\S+)/publish",
            env,
        )
        return Served(process, url)
    # The other servers build the app from the configuration alone: name the broker there.
    config = home / "radio.toml"
    text = config.read_text()
    if "[broker]" not in text:
        config.write_text(f'[broker]\nmqtt = "127.0.0.1:{mqtt_port}"\n' + text)
    if server == "waitress":
        return _waitress("radio.bridge.app:create_app", threads, env)
    return _gunicorn("radio.bridge.app:create_app()", server, workers, threads, env)


def serve_bare(server: str, workers: int, threads: int) -> Served:
    """The bare yardstick (``bare_flask.py``) under the named server."""
    if server == "radio":
        return _gunicorn(
            f"bare_flask:create_asgi_app({threads})",
            "radio.bridge.run.BridgeWorker",
            workers,
            threads,
            None,
        )
    if server == "waitress":
        return _waitress("bare_flask:create_app", threads, None)
    return _gunicorn("bare_flask:create_app()", server, workers, threads, None)
