"""``radio bridge``: the Flask app under gunicorn, pre-forked sync workers.

Why gunicorn with sync workers: measured on 2 cores (bench/http_door.py, bench/RESULTS.md), the
bridge served 803 requests/s under gunicorn with 2 sync workers, one MQTT connection each, and 233
under waitress with 4 threads sharing one paho network thread.

The listening socket is bound here, before gunicorn starts, so that port 0 works and the real port
can be printed; gunicorn inherits it as ``fd://N``. The service key is made here too, once,
before the workers fork and each opens its own broker link.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.sync import SyncWorker

from radio import logs
from radio.config import Address, load_settings

DEFAULT_WORKERS = 2


class GracefulSyncWorker(SyncWorker):  # type: ignore[misc]
    """Ctrl-C reaches the workers too (one process group): finish the request in hand, then exit.

    gunicorn's sync worker exits at once on SIGINT, in the middle of a request or of loading the
    app, with a traceback in the log; a publish that was half done would be answered by nobody.
    """

    def init_signals(self) -> None:
        """SIGINT as SIGTERM: stop accepting, finish the request in hand."""
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    """Ctrl-C stops the workers as gracefully as SIGTERM does."""

    def handle_int(self) -> None:
        self.handle_term()


class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    def __init__(self, options: dict[str, Any], load: Callable[[], Any]) -> None:
        self._options = options
        self._load = load
        super().__init__()

    def load_config(self) -> None:
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> Any:
        return self._load()

    def run(self) -> None:
        _GracefulArbiter(self).run()


def bind(listen: Address) -> socket.socket:
    """The bridge's listening socket (IPv4 or IPv6 by the host given)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.create_server((listen.host, listen.port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def run(
    config: str | None,
    keys: str | None,
    *,
    listen: Address | None,
    broker: Address | None,
    workers: int = DEFAULT_WORKERS,
    timeout: float = 5.0,
) -> None:
    """Serve until SIGINT or SIGTERM (gunicorn stops its workers gracefully, then exits 0)."""
    # Before anything imports the Prometheus client: it picks its storage once, at import.
    metrics_dir = tempfile.mkdtemp(prefix="radio-bridge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from radio.bridge.identity import bridge_credentials  # noqa: PLC0415

    settings = load_settings(config, keys)
    listen = listen or settings.bridge.listen
    bridge_credentials(settings)
    sock = bind(listen)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        "Radio bridge running\n"
        f'  POST http://{shown}:{port}/publish   (header API-KEY, body {{"network": ..., "data": {{...}}}})\n'
        f"  GET  http://{shown}:{port}/healthz\n"
        f"  GET  http://{shown}:{port}/metrics\n"
        f"  broker: mqtt://{broker or settings.broker.mqtt}, {workers} workers\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )

    def load() -> Any:
        from radio.bridge.app import create_app  # noqa: PLC0415 - each worker builds its own app and link

        logs.setup()
        return create_app(
            {
                "RADIO_CONFIG": config,
                "RADIO_KEYS": keys,
                "BROKER": broker,
                "PUBACK_TIMEOUT": timeout,
            }
        )

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    def on_exit(_server: Any) -> None:
        shutil.rmtree(metrics_dir, ignore_errors=True)

    options = {
        "bind": [f"fd://{sock.fileno()}"],
        "workers": workers,
        "worker_class": "radio.bridge.serve.GracefulSyncWorker",
        "timeout": max(30, int(timeout) * 3),
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "radio-bridge",
        "child_exit": child_exit,
        "on_exit": on_exit,
    }
    _Gunicorn(options, load).run()
