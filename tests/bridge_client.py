"""The bridge in the test's own process: the real app and a real publisher, without forking a server.

``InProcessBridge`` builds ``create_app`` with a real broker link. ``post`` goes through Flask's
test client (no socket: the fast tier); ``url`` starts, on first use, the same ASGI stack
``radio bridge`` runs (``bridge/asgi.py`` under uvicorn) on a free port in a thread, for tests that
need real HTTP: raw sockets, slow clients, the article's own ``requests`` code.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

import uvicorn

from radio.bridge.app import create_app
from radio.bridge.asgi import BufferedWSGI
from radio.bridge.publisher import Publisher
from radio.bridge.state import state_of
from radio.config import Address


class Answer:
    """A test-client response with the few things tests read, spelled as ``requests`` spells them."""

    def __init__(self, response: Any) -> None:
        self.status_code: int = response.status_code
        self.headers = response.headers
        self.text: str = response.get_data(as_text=True)
        self._json = response.get_json(silent=True)

    def json(self) -> Any:
        return self._json


class InProcessBridge:
    """``create_app`` publishing to the broker on ``broker_port``, ready once its link is up."""

    def __init__(
        self, config: str, broker_port: int, *, puback_timeout: float = 5.0, body_timeout: float = 10.0
    ) -> None:
        self.body_timeout = body_timeout
        self.app = create_app(
            {
                "RADIO_CONFIG": config,
                "BROKER": Address("127.0.0.1", broker_port),
                "PUBACK_TIMEOUT": puback_timeout,
            }
        )
        self.publisher: Publisher = state_of(self.app).publisher
        self.client = self.app.test_client()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        assert self.publisher.wait_connected(20), "the bridge never reached the broker"

    def post(self, body: bytes | str | None = None, headers: dict[str, str] | None = None) -> Answer:
        return Answer(self.client.post("/publish", data=body, headers=headers or {}))

    @cached_property
    def url(self) -> str:
        asgi = BufferedWSGI(
            self.app,
            body_timeout=self.body_timeout,
            body_limit=state_of(self.app).body_limit,
            threads=16,
            inline=("/publish",),  # as radio bridge serves it (bridge/app.py, create_asgi_app)
        )
        self._server, self._thread, url = serve_in_thread(asgi)
        return url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
        self.publisher.stop()


def serve_in_thread(asgi: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    """``asgi`` under uvicorn, as ``radio bridge`` runs it, on a free port in a thread of its own."""
    config = uvicorn.Config(
        asgi,
        host="127.0.0.1",
        port=0,
        loop="asyncio",
        http="httptools",
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the in-process server did not start"
        threading.Event().wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"
