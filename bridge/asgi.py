"""The bridge's WSGI app behind an event loop: a request takes a thread only once it is all here.

A slow or stalled client must cost a socket, never a worker. The event loop (uvicorn) reads the
headers; this adapter reads the whole body, within ``body_timeout`` seconds of the headers, and only
then hands the complete request to a thread running Flask. A body that does not arrive in time is
answered 408 ``{"error": ...}`` and the connection closed; it never reached a thread. When the
server stops, a request still waiting for its body is answered 503 at once.

A body larger than ``body_limit()`` is not buffered: the app is called with the declared
``Content-Length`` and no body (or with the first ``limit + 1`` bytes of a chunked body) and
refuses it with 413, and the connection is closed, not drained.

Flask runs in a thread pool. An app may leave the last, waiting part of a request to the event
loop: given ``environ[DEFERRABLE]``, it puts an async ``Finish`` in ``environ[DEFERRED]`` and
returns; the loop awaits it with the response the app built, and sends what it returns. The
bridge's publish view leaves its wait for the broker's PUBACK so: no thread is held, or woken,
for it. Without the key (any other WSGI server), the same view waits in its thread.

A view that never waits need not leave the loop at all: requests to the ``inline`` paths, with a
body of at most ``inline_body`` bytes, run on the event loop itself. Handing a request to a
thread and its answer back costs more than the publish view's checks, and the loop and the
pool's threads then take turns at the GIL; on two cores ``POST /publish`` answered 1.2 to 1.3
times as many requests inline (bench/RESULTS.md, "HTTP door"). While such a view runs, nothing
else in its worker does, hence the rules: a larger body (its JSON alone takes milliseconds) goes
to the pool, and so does a request the app finds it would have to wait for. Such an app sees
``environ[INLINE]``; before doing anything it could not do twice, it puts True in
``environ[TO_A_THREAD]`` and returns, and the request is run again, from the start, in a thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from radio.errors import RadioError
from radio.sources import source_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

log = logging.getLogger("radio.bridge")

CLOSE: Final = (b"connection", b"close")
DEFERRABLE: Final = "radio.deferrable"
"""In the environ of every request: the app may leave its last step to the event loop."""
DEFERRED: Final = "radio.deferred"
"""Where the app puts that last step, a ``Finish``."""
INLINE: Final = "radio.inline"
"""In the environ of a request run on the event loop: the app must not wait for anything."""
TO_A_THREAD: Final = "radio.to_a_thread"
"""Where an app run inline asks for the request to be run again in a thread (True)."""
INLINE_BODY: Final = 4096
"""The largest body run inline by default: a sample's usual size, parsed in well under 1 ms."""

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""Status, headers, body."""
Finish = Callable[[Answer], Awaitable[Answer]]
"""Given the response the app built, the one to send (awaited on the event loop)."""


class _Stopping(RadioError):
    """The server is stopping and the request's body is not all here: it is answered 503."""


class _Incomplete(RadioError):
    """The client went away before its body was complete: nobody is left to answer."""


def _json_answer(status: int, message: str) -> Answer:
    body = json.dumps({"error": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        CLOSE,
    ]
    return status, headers, body


class BufferedWSGI:
    """An ASGI application serving a WSGI application whose requests are read completely first."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        body_timeout: float,
        body_limit: Callable[[], int],
        threads: int,
        inline: Collection[str] = (),
        inline_body: int = INLINE_BODY,
        on_startup: Callable[[], None] | None = None,
        ready: Callable[[], Awaitable[object]] | None = None,
        on_shutdown: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        bulky: Callable[[str], bool] | None = None,
        bulky_threads: int = 2,
    ) -> None:
        self.app = app
        self.bulky = bulky
        """Paths whose answers are large (the history): they run in a pool of their own,
        ``bulky_threads`` wide. However many arrive, they wait their turn in its queue, holding
        no thread: at most that many are built at once (so much memory, so much of the GIL), and
        every other route keeps the main pool."""
        self._bulky_pool = ThreadPoolExecutor(bulky_threads, thread_name_prefix="radio-bridge-bulky")
        self.bulky_per_source = bulky_threads
        """Bulky requests one source (an address, an IPv6 /64) may have in hand at once, being built
        or waiting for a thread; more are answered 429 at once. 400 history requests from one
        address made every other reader wait 15 s behind them, for as long as it kept asking."""
        self._bulky_held: Counter[str] = Counter()
        self.inline = frozenset(inline)
        """Paths whose requests run on the event loop, not in the pool: their views never wait."""
        self.inline_body = inline_body
        self.body_timeout = body_timeout
        self.body_limit = body_limit
        self.on_startup = on_startup
        self.ready = ready
        """Awaited after ``on_startup``, before the server takes its first connection."""
        self.on_shutdown = on_shutdown
        self.on_stop = on_stop
        """Called on the event loop as the server begins to stop, before the requests in hand end."""
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="radio-bridge")
        self._reading: set[asyncio.Task[Any]] = set()
        """Requests whose body is still arriving: a stop answers them at once rather than waiting."""
        self._stopping = False

    def begin_stop(self) -> None:
        """The server stops: a request still waiting for its body is answered 503 now.

        Otherwise a client that sent half a body would hold the stop for up to ``body_timeout``,
        as long as gunicorn waits before it kills the worker.
        """
        self._stopping = True
        for task in self._reading:
            task.cancel()
        if self.on_stop is not None:
            self.on_stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One ASGI connection scope: lifespan (start, stop) or one HTTP request."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.on_startup is not None:
                    self.on_startup()  # on the server's event loop
                if self.ready is not None:
                    await self.ready()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # Requests in hand finish first; then the broker link closes cleanly.
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """Wait for the requests in hand, then let the app release what it holds."""
        self._pool.shutdown(wait=True)
        self._bulky_pool.shutdown(wait=True)
        if self.on_shutdown is not None:
            self.on_shutdown()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _content_length(scope)
        limit = self.body_limit()
        close = False
        try:
            if declared is not None and declared > limit:
                body, close = b"", True  # the app refuses it (413) by its declared length
            else:
                body = await self._body(receive, limit)
                close = len(body) > limit
                declared = len(body)  # also for a chunked body, which WSGI cannot read otherwise
        except TimeoutError:
            status, headers, payload = _json_answer(
                408, f"request body not received within {self.body_timeout:g} s"
            )
        except _Stopping:
            status, headers, payload = _json_answer(503, "the bridge is stopping: retry")
        except _Incomplete:
            return
        else:
            environ = _environ(scope, body, declared)
            status, headers, payload = await self._run(scope, environ, body, declared)
            finish: Finish | None = environ.get(DEFERRED)
            if finish is not None:
                try:
                    status, headers, payload = await finish((status, headers, payload))
                except Exception:
                    log.exception("unexpected error while answering a request")
                    status, headers, payload = _json_answer(500, "internal error")
            if close:
                headers.append(CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _run(self, scope: Scope, environ: dict[str, Any], body: bytes, length: int | None) -> Answer:
        """The app's answer: on the loop for a small request to an inline path, else in a thread."""
        if scope["path"] in self.inline and len(body) <= self.inline_body:
            environ[INLINE] = True
            answer = self._call(environ)
            if not environ.get(TO_A_THREAD):
                return answer
            environ.clear()
            environ.update(_environ(scope, body, length))  # afresh: the first run read the body
        if self.bulky is not None and self.bulky(scope["path"]):
            return await self._run_bulky(scope, environ)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, environ)

    async def _run_bulky(self, scope: Scope, environ: dict[str, Any]) -> Answer:
        """A bulky request in its pool, unless its source has ``bulky_per_source`` in hand already."""
        source = source_of(str((scope.get("client") or ("",))[0]))
        held = self._bulky_held
        if held[source] >= self.bulky_per_source:
            status, headers, payload = _json_answer(
                429,
                f"{self.bulky_per_source} history requests from this address are being answered: "
                "retry when one is",
            )
            return status, [*headers, (b"retry-after", b"1")], payload
        held[source] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._bulky_pool, self._call, environ)
        finally:
            held[source] -= 1
            if not held[source]:
                del held[source]

    async def _body(self, receive: Receive, limit: int) -> bytes:
        """The body, within ``body_timeout`` (else TimeoutError), unless the server stops first."""
        task = asyncio.current_task()
        if self._stopping or task is None:
            raise _Stopping
        self._reading.add(task)
        # A plain timer rather than asyncio.timeout(): this runs for every request.
        expired: list[bool] = []
        expiry = asyncio.get_running_loop().call_later(self.body_timeout, _expire, task, expired)
        try:
            return await _read_body(receive, limit)
        except asyncio.CancelledError:
            if (expired or self._stopping) and task.uncancel() == 0:
                raise (TimeoutError if expired else _Stopping) from None
            raise
        finally:
            expiry.cancel()
            self._reading.discard(task)

    def _call(self, environ: dict[str, Any]) -> Answer:
        started: list[tuple[str, list[tuple[str, str]]]] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [(status, headers)]
            return chunks.append

        iterable = self.app(environ, start_response)
        try:
            chunks.extend(iterable)
        finally:
            closing = getattr(iterable, "close", None)
            if closing is not None:
                closing()
        if not started and environ.get(TO_A_THREAD):
            return 0, [], b""  # nothing to send: the request runs again in a thread
        status, headers = started[0]
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return int(status[:3]), encoded, b"".join(chunks)


def _expire(task: asyncio.Task[Any], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses such a request before it gets here
    return None


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The body, or its first ``limit + 1`` bytes when it is larger."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Incomplete
        chunk = message.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(parts)[: limit + 1]
        if not message.get("more_body", False):
            return b"".join(parts)


def _environ(scope: Scope, body: bytes, length: int | None) -> dict[str, Any]:
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        DEFERRABLE: True,
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name in {"CONTENT_LENGTH", "TRANSFER_ENCODING"}:
            continue  # the body is complete: its length is the one above
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        key = f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
