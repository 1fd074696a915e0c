"""The bridge in the test's own process, served as ``radio bridge`` serves it, without forking a server.

``InProcessBridge`` runs the production app (``create_asgi_app``: ``bridge/asgi.py``) under the
production server (``bridge/run.py``: uvicorn, uvloop, its bounded HTTP protocol, lifespan on)
on a free port, in a thread with its own event loop. The broker link starts on that loop, as in a
``radio bridge`` worker, so ``post`` (real HTTP) takes the publish path production takes: the view
on the event loop, the PUBACK awaited there. What only a separate process can show (gunicorn's
workers, signals, metrics summed over processes) is the slow tier's (``conftest.start_bridge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import requests
import uvicorn
from flask.testing import FlaskClient
from polling import until

from radio.bridge.app import create_asgi_app
from radio.bridge.publisher import Publisher
from radio.bridge.run import BridgeWorker, _Server
from radio.bridge.state import BridgeState, state_of
from radio.config import Address


class Answer:
    """An HTTP answer with the few things tests read; ``json()`` is None for a body that is not JSON."""

    def __init__(self, response: requests.Response) -> None:
        self.status_code: int = response.status_code
        self.headers = response.headers
        self.content: bytes = response.content
        self.text: str = response.content.decode("utf-8", "replace")
        try:
            self._json = json.loads(response.content)
        except ValueError:
            self._json = None

    def json(self) -> Any:
        return self._json


class InProcessBridge:
    """``radio bridge``'s app and server, publishing to the broker on ``broker_port``, ready once linked."""

    def __init__(
        self, config: str, broker_port: int, *, puback_timeout: float = 5.0, body_timeout: float = 10.0
    ) -> None:
        self.asgi = create_asgi_app(
            {
                "RADIO_CONFIG": config,
                "BROKER": Address("127.0.0.1", broker_port),
                "PUBACK_TIMEOUT": puback_timeout,
            },
            body_timeout=body_timeout,
        )
        self.app = self.asgi.app
        self.state: BridgeState = state_of(self.app)
        self.publisher: Publisher = self.state.publisher
        self.client: FlaskClient = self.app.test_client()
        """Flask's test client, for views that need a request no socket here can make (another
        source address); every publish goes through ``post``, over HTTP."""
        self._sessions = threading.local()
        self._opened: list[requests.Session] = []
        self._server, self._thread, self.url = serve_in_thread(self.asgi)
        assert self.publisher.wait_connected(20), "the bridge never reached the broker"

    def post(self, body: bytes | str | None = None, headers: dict[str, str] | None = None) -> Answer:
        """``POST /publish`` over HTTP, on a kept-alive connection of this thread's own."""
        session: requests.Session | None = getattr(self._sessions, "session", None)
        if session is None:
            session = self._sessions.session = requests.Session()
            self._opened.append(session)
        data = body.encode() if isinstance(body, str) else body
        return Answer(session.post(self.url + "/publish", data=data, headers=headers or {}, timeout=30))

    def stop(self) -> None:
        """Stop the server as a worker stops: requests in hand finish, then the broker link closes."""
        for session in self._opened:
            session.close()
        self._server.stop()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the in-process bridge did not stop within 10 s"


class ServerInThread(_Server):
    """``radio bridge``'s server, told to stop by an event rather than found stopping by its poll.

    uvicorn looks at ``should_exit`` every 0.1 s; a test stopping hundreds of servers would wait
    for that poll each time. Everything from the stop on (requests in hand, the lifespan's
    shutdown, the broker link's close) is the production server's own.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _stopping: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        if not self.should_exit:
            await self._stopping.wait()

    def stop(self) -> None:
        """Stop serving (from any thread): as SIGTERM would, without waiting for the next poll."""
        self.should_exit = True
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                self._loop.call_soon_threadsafe(self._stopping.set)


def serve_in_thread(asgi: Any) -> tuple[ServerInThread, threading.Thread, str]:
    """``asgi`` under ``radio bridge``'s server and its worker's settings, on a free port, in a thread."""
    config = uvicorn.Config(asgi, host="127.0.0.1", port=0, log_level="warning", **BridgeWorker.CONFIG_KWARGS)
    server = ServerInThread(config)
    thread = threading.Thread(target=server.run, name="in-process-bridge", daemon=True)
    thread.start()
    assert until(lambda: server.started or not thread.is_alive(), 20), "the in-process server never started"
    assert server.started, "the in-process server did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"
