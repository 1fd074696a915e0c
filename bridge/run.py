"""``radio bridge``: the app under gunicorn's arbiter, uvicorn event-loop workers.

Why this server (measured, bench/RESULTS.md, "HTTP door"): a pre-forked sync worker is held by any
client that is slow to send its request, so two clients trickling headers stopped all publishing.
Here each worker process reads requests on an event loop (uvicorn, httptools) and hands only
complete ones to Flask (``bridge/asgi.py``): ``POST /publish`` on the loop itself, every other
route in a thread. A slow client costs a socket. It also keeps connections alive and lets many
requests per process wait for their PUBACKs at once.

The listening socket is bound here, before gunicorn starts, so that port 0 works and the real port
can be printed; gunicorn inherits it as ``fd://N``. The service key is made here too, once,
before the workers fork and each opens its own broker link.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Final

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.server import Server, ServerState
from uvicorn_worker import UvicornWorker

from radio import logs
from radio.config import Address, BridgeSettings, load_settings
from radio.errors import RadioError
from radio.logsummary import BRIDGE_LOGGER, WINDOW, Summary
from radio.sources import source_of
from radio.tls import feed_handshake, server_context

log = logging.getLogger("radio.bridge")

DEFAULT_WORKERS: Final = 2
DEFAULT_THREADS: Final = 16
"""Requests per worker process that run Flask (and wait for their PUBACK) at once."""
HEAD_LIMIT: Final = 64 * 1024
"""Bytes of request line and headers a request may send (431 past them)."""
PAST_LIMIT_GRACE: Final = 0.25
"""Seconds a new connection past its address's bound of waiting ones has to complete its request's
headers. A client sends its request with the last packet of the TCP handshake; a burst of them is
accepted in one turn of the loop, before any is read, and each would count as waiting."""
STOP_GRACE: Final = 0.5
"""Seconds a connection the server finds mid-request-head as it stops has to complete it, and one
opened or answered just before the stop has, from then, to send its request: either is answered
503, the server stopping. Any longer would hold the stop."""
REFUSED_LINGER: Final = 1.0
"""Seconds a refused connection stays open to drop what its client still sends, so that the
refusal is read rather than lost to a reset."""
LOG_REPEATS: Final = 20
"""Lines of one kind a worker writes per minute; the rest are summed up (``radio.logsummary``): a
broker that cannot store a sample closes the bridge's link at each one, and every request would
write three lines."""
GC_THRESHOLDS: Final = (50_000, 10, 10)
"""The collector's thresholds in a worker: a request's objects are freed as it ends, so Python's
default (a young collection every 700 allocations) collected over and over for nothing, and the
pauses showed in the door's p99 (bench/RESULTS.md, "HTTP door")."""


PER_REQUEST_WARNINGS: Final = frozenset({"Invalid HTTP request received.", "Unsupported upgrade request."})
"""What uvicorn logs for a request any client can send: in a loop, a line a request. Neither is
logged: a request that is not valid HTTP is answered 400 JSON and counted in ``/metrics``
(``radio_bridge_connections_closed_total{reason="invalid_request"}``); an upgrade the door does
not speak is served as a plain request."""


class _HeadTooLong(RadioError):
    """A request head over ``HEAD_LIMIT``, raised from a parser callback to stop it.

    A refusal (the client is answered 431), so under the root as every other.
    """


class _PerRequestWarnings(logging.Filter):
    """Holds back uvicorn's warnings that any client can make it write once per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in PER_REQUEST_WARNINGS


def _count_closed(reason: str) -> None:
    """Count a connection closed for sending no request (imported late: see ``run``)."""
    from radio.bridge import metrics  # noqa: PLC0415

    metrics.CLOSED.labels(reason=reason).inc()


_waiting_gauge: list[Callable[[float], None]] = []
"""``WAITING.inc``, looked up once a worker serves (``_publish_limits``): it runs twice a request."""


def _count_waiting(change: int) -> None:
    for inc in _waiting_gauge:
        inc(change)


BACKLOG: Final = 2048
"""Connections the kernel completes and holds for the listening socket until a worker accepts them."""
_HANDSHAKES: set[asyncio.Task[None]] = set()
"""HTTPS connections in their handshake (the loop keeps only weak references to tasks)."""
_TAKEN_AT_STOP: set[asyncio.Task[object]] = set()
"""Connections accepted as the server stops, while their TLS handshake (if any) runs."""


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


def _taken_done(task: asyncio.Task[object]) -> None:
    """One accepted as the server stops is served, or its client left (a failed handshake): no log."""
    _TAKEN_AT_STOP.discard(task)
    if not task.cancelled():
        task.exception()


class _State(ServerState):
    """uvicorn's state shared by a server's connections, with whether the server stops and its TLS."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = False
        self.tls: ssl.SSLContext | None = None
        """HTTPS: the context each connection's handshake uses, begun once it is counted."""


class _Server(Server):
    """uvicorn's server, stopping gracefully on SIGINT and SIGTERM and then exiting normally.

    uvicorn re-raises the signal it stopped on, which would kill the worker with it after the clean
    stop; gunicorn's arbiter, not the worker, decides how the whole server ends.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.server_state: _State = _State()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen for plain TCP even over HTTPS: each connection starts its own handshake.

        A handshake the loop ran before the connection was made would leave a client that never
        finishes it uncounted: one address could hold sockets by the thousand, 60 s each.
        """
        self.server_state.tls, self.config.ssl = self.config.ssl, None
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Requests waiting for their body are answered 503; the rest: ``_BoundedHeaders.shutdown``."""
        begin_stop = getattr(self.config.app, "begin_stop", None)
        if begin_stop is not None:  # requests still waiting for their body are answered now
            begin_stop()
        self.server_state.stopping = True
        self._take_waiting_connections(sockets or [])
        await super().shutdown(sockets)

    def _take_waiting_connections(self, sockets: list[socket.socket]) -> None:
        """Accept what the kernel holds for the listeners, then close them: a stop answers those too.

        Connections whose handshake the kernel completed and nobody accepted yet would be reset
        when the last listener closes, their requests (often sent with the handshake) unanswered:
        their clients could not tell whether the sample was published. Taken here, on the loop,
        with nothing in between the last accept and the close, each is served as one that arrives
        while the server stops (``_BoundedHeaders.shutdown``); a connection made after it is refused.
        """
        taken: list[socket.socket] = []
        for listener in sockets:
            with contextlib.suppress(OSError):  # BlockingIOError: none left; any other: closed already
                while len(taken) < BACKLOG:
                    conn, _ = listener.accept()
                    taken.append(conn)
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        config, state, app_state = self.config, self.server_state, self.lifespan.state
        for conn in taken:
            protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg] # as uvicorn makes it
                config=config, server_state=state, app_state=app_state
            )
            conn.setblocking(False)  # noqa: FBT003 - the socket's own call
            made = loop.connect_accepted_socket(functools.partial(_same, protocol), conn, ssl=config.ssl)
            task: asyncio.Task[object] = loop.create_task(made)
            _TAKEN_AT_STOP.add(task)
            task.add_done_callback(_taken_done)


class _BoundedHeaders(HttpToolsProtocol):
    """uvicorn's httptools protocol, with bounds on what a client that sends no request may hold.

    httptools keeps a header until it is complete, however long: a few clients sending endless
    headers would fill a worker's memory. Past ``HEAD_LIMIT`` bytes the request is answered 431
    and the connection closed.

    uvicorn closes an idle kept-alive connection, but a new one that never sends a byte (or never
    finishes its headers) would stay open for ever: one source opening thousands would hold the
    worker's sockets. So a connection is *waiting* from its opening, and again from each answer,
    until its next request's headers are complete; it may wait ``idle_timeout`` seconds (then it
    is closed, with a 408 if it had begun a request), and one source (an address; an IPv6 /64,
    ``radio.sources``) may hold at most ``max_idle_per_source`` waiting connections per worker (a
    new one past that is closed at once; a kept-alive one past it is closed after its answer).
    Both are counted in ``/metrics``.
    """

    idle_timeout: float = 10.0
    max_idle_per_source: int = 64
    waiting: ClassVar[Counter[str]] = Counter()
    """Waiting connections per source (``radio.sources``), in this worker."""

    _in_head = False
    _head_bytes = 0
    _head_over = False
    _refused = False
    _waiting_as: str | None = None
    _ready_at = 0.0
    """When it was last ready for a request: opened (over HTTPS, its handshake done) or answered."""
    _handshaking = False
    _tls: ssl.SSLContext | None = None
    """Over HTTPS, until the client's first bytes start its handshake."""
    _early: list[bytes]
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        state = self.server_state
        tls = state.tls if isinstance(state, _State) else None
        if tls is not None and transport.get_extra_info("sslcontext") is None:
            self._begin_tls(transport, tls)
            return
        super().connection_made(transport)
        self._ready_at = self.loop.time()
        self._start_waiting(refuse_past_limit=True)  # over HTTPS, waiting since the accept already
        state = self.server_state
        if (
            isinstance(state, _State) and state.stopping
        ):  # taken as the server stops (after its TLS handshake)
            self.shutdown()

    def shutdown(self) -> None:
        """The server stops: a request on its way is answered (503: stopping), the rest closed.

        uvicorn closes every connection not in the middle of a request. One whose client has sent
        its next request, or part of it, not yet read would be reset, the request unanswered: its
        client could not tell whether the sample was published. It is kept to answer that request
        (the app answers 503 once stopping, with ``connection: close``), for at most
        ``STOP_GRACE`` seconds to finish its request's headers.

        An idle HTTPS connection is dropped, not closed: closing one the TLS way waits for the
        client's reply to the server's close_notify, and a client that keeps an idle keep-alive
        connection open never sends it: every such client would hold the stop until gunicorn kills
        the worker (``graceful_timeout``).
        """
        if self.transport.is_closing():
            return
        between = self.cycle is None or self.cycle.response_complete
        if between and (self._in_head or self._peek()):
            self._stop_waiting()
            self._idle_timer = self.loop.call_later(STOP_GRACE, self._stop_grace_over)
            return
        if between and self.loop.time() - self._ready_at < STOP_GRACE:
            # Opened (its TLS handshake done) or answered a moment ago: its client's request may
            # be on its way already, and would meet a reset. Kept until STOP_GRACE after, for
            # that request's 503.
            self._stop_waiting()
            self._idle_timer = self.loop.call_at(self._ready_at + STOP_GRACE, self._stop_grace_over)
            return
        if between and self.scheme == "https":
            self.transport.abort()
            return
        super().shutdown()

    def _stop_grace_over(self) -> None:
        """A connection kept through the stop has not sent a whole request head: 503, else closed."""
        self._idle_timer = None
        if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
            return
        if self._in_head:
            self._refuse(503, "Service Unavailable", "the bridge is stopping: retry")
        elif self.scheme == "https":
            self.transport.abort()  # see ``shutdown``
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if not self._handshaking:
            super().connection_lost(exc)

    def _begin_tls(self, transport: asyncio.Transport, tls: ssl.SSLContext) -> None:
        """An HTTPS connection waits from its TCP accept, as a plain one does: its handshake too.

        So it counts against ``max_idle_per_source`` from the start, and its ``idle_timeout``
        runs from the accept. One past that bound that sends nothing in ``PAST_LIMIT_GRACE`` is
        closed; one that began its handshake has the handshake (``idle_timeout`` at most), then
        that grace again to complete its request's headers: a burst's handshakes take turns.
        The handshake starts with the client's first bytes, which are handed to it.
        """
        self.transport, self.client, self._handshaking = transport, get_remote_addr(transport), True
        self._tls, self._early = tls, []
        self._start_waiting(refuse_past_limit=True)

    def _hello(self, data: bytes) -> None:
        """The client's first bytes, its ClientHello: the handshake starts, and reads the rest."""
        tls, self._tls = self._tls, None
        if tls is None:
            return
        self.transport.pause_reading()
        handshake = self.loop.create_task(self._handshake(self.transport, tls, data))
        _HANDSHAKES.add(handshake)
        handshake.add_done_callback(_HANDSHAKES.discard)

    async def _handshake(self, transport: asyncio.Transport, tls: ssl.SSLContext, hello: bytes) -> None:
        self.loop.call_soon(feed_handshake, transport, hello)
        try:
            secure = await self.loop.start_tls(
                transport, self, tls, server_side=True, ssl_handshake_timeout=self.idle_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, RuntimeError):  # its client left, or closed by a bound
            secure = None
        finally:
            self._handshaking = False
        if secure is None:
            self._stop_waiting()
            transport.abort()
            return
        if self._waiting_as is None and self._idle_timer is not None:
            # Past the bound: its grace to send its request's headers starts again now.
            self._idle_timer.cancel()
            self._idle_timer = self.loop.call_later(PAST_LIMIT_GRACE, self._past_limit)
        self.connection_made(secure)
        early, self._early = b"".join(self._early), []
        if early and not secure.is_closing():
            self.data_received(early)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        if len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) > HEAD_LIMIT:
            # A head whose first bytes came in the read that began it was not counted as it came
            # (``data_received`` counts from the message's start on): whole, it is measured here.
            self._head_over = True
            raise _HeadTooLong  # the parser stops here; ``send_400_response`` answers 431
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._ready_at = self.loop.time()
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # kept alive, and nothing pipelined: waiting
            self._start_waiting(refuse_past_limit=False)

    def _start_waiting(self, *, refuse_past_limit: bool) -> None:
        source = source_of(self.client[0]) if self.client else ""  # an IPv6 client: its /64
        if self._waiting_as is not None or self._idle_timer is not None or self.transport.is_closing():
            return  # waiting already (over HTTPS, since the accept), or judged at its grace's end
        if self.waiting[source] >= self.max_idle_per_source:
            if refuse_past_limit:  # new: judged once its request had time to be read
                self._idle_timer = self.loop.call_later(PAST_LIMIT_GRACE, self._past_limit)
                return
            _count_closed("source_limit")
            self.transport.close()  # its answer is written: it is not kept alive
            return
        self.waiting[source] += 1
        self._waiting_as = source
        _count_waiting(1)
        self._idle_timer = self.loop.call_later(self.idle_timeout, self._idle_expired)

    def _stop_waiting(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        source, self._waiting_as = self._waiting_as, None
        if source is not None:
            self.waiting[source] -= 1
            if not self.waiting[source]:
                del self.waiting[source]
            _count_waiting(-1)

    def _past_limit(self) -> None:
        """A new connection past the bound has not completed its request's headers in the grace.

        It is not counted among the waiting, so those stay within the bound. Unless its headers
        are in the kernel, unread (the loop was busy), it is closed: at once if it sent nothing
        (nothing to answer), 408 if it began a request.
        """
        self._idle_timer = None
        if self.transport.is_closing():
            return
        if self._handshaking:
            if self._tls is None:  # its handshake began: judged once it ends (``_handshake``)
                self._idle_timer = self.loop.call_later(self.idle_timeout, self._idle_expired)
                return
            _count_closed("source_limit")  # it sent nothing
            self.transport.abort()
            return
        if self._asked_already():
            self._idle_timer = self.loop.call_later(self.idle_timeout, self._idle_expired)
            return
        _count_closed("source_limit")
        if self._in_head:
            self._refuse(408, "Request Timeout", "request headers not received in time")
        else:
            self.transport.abort()

    def _asked_already(self) -> bool:
        """Whether the connection's request line and headers are all in the kernel, unread.

        The bytes are looked at, not taken. Over HTTPS they are not the request's: no.
        """
        if self._in_head or self._handshaking or self.transport.get_extra_info("sslcontext") is not None:
            return False
        return b"\r\n\r\n" in self._peek()

    def _peek(self) -> bytes:
        """What the client sent that the kernel holds, unread: looked at, not taken (TLS: encrypted)."""
        held = self.transport.get_extra_info("socket")
        if held is None:
            return b""
        peek = socket.socket(fileno=held.fileno())
        try:
            return peek.recv(HEAD_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return b""
        finally:
            peek.detach()  # the transport's own socket: never closed here

    def _idle_expired(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing():
            return
        _count_closed("idle_timeout")
        if self._in_head:  # it began a request and never finished its headers
            message = f"request headers not received within {self.idle_timeout:g} s"
            self._refuse(408, "Request Timeout", message)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            if self._tls is not None:  # before TLS: the first bytes of its handshake
                self._hello(data)
            else:  # its request, decrypted as the handshake ended, before it was handed over
                self._early.append(data)
            return
        if self._refused:
            return  # what the client still sends is read and dropped until the connection closes
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self._refuse_head()
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:  # noqa: ARG002 - uvicorn's words, in text
        """A request httptools cannot parse: 400 in JSON, as every error of the door is."""
        if self._head_over:
            self._refuse_head()
            return
        _count_closed("invalid_request")
        self._refuse(400, "Bad Request", "the request is not valid HTTP/1.1")

    def _refuse_head(self) -> None:
        message = f"request line and headers over {HEAD_LIMIT} bytes"
        self._refuse(431, "Request Header Fields Too Large", message)

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` JSON to a request whose headers will not be read, and close."""
        self._refused = True
        body = json.dumps({"error": message}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason.encode(), len(body), body)
        )
        # Closing now, with the client's bytes unread, would reset the connection and lose the
        # answer: say we are done writing, drop what still arrives, and close a moment later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER, self.transport.close)


class BridgeWorker(UvicornWorker):  # type: ignore[misc]
    """A gunicorn worker: one event loop (uvloop, httptools) and one broker link per process."""

    CONFIG_KWARGS: Final = {
        "loop": "uvloop",
        "http": _BoundedHeaders,
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,
    }
    """``proxy_headers``: a request's source is its connection's peer. uvicorn would otherwise take
    it from ``X-Forwarded-For`` on connections from loopback, where a proxy that passes its clients'
    headers on lets each client name any address: the failed-authentication limit and the audit's
    "from" would be the client's word."""
    settings: BridgeSettings = BridgeSettings()
    """``[bridge]`` as ``run`` read it (keep_alive, and the limits ``/metrics`` shows)."""

    def init_signals(self) -> None:
        """Ctrl-C reaches the workers too (one process group): leave it to the arbiter.

        The arbiter answers it with SIGTERM to each worker, which uvicorn handles gracefully; a
        SIGINT of its own would kill a worker still loading the app, with a traceback.
        """
        super().init_signals()
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def _serve(self) -> None:
        # What the app holds once loaded lives as long as the worker: out of the collector's sight.
        logging.getLogger("uvicorn.error").addFilter(_PerRequestWarnings())
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self.config.app = self.wsgi
        self.config.timeout_keep_alive = self.settings.keep_alive  # gunicorn's own takes whole seconds
        _publish_limits(self.settings)
        server = _Server(config=self.config)
        # gunicorn's arbiter sends SIGQUIT for a quick stop (its own SIGINT or SIGQUIT); uvicorn's
        # worker would only mark itself dead and keep serving until the arbiter's SIGKILL.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, server.handle_exit, signal.SIGQUIT, None)
        orphaned = loop.create_task(self._stop_when_orphaned(server))
        summary = Summary(LOG_REPEATS)
        summary.attach(BRIDGE_LOGGER)
        summing = loop.create_task(_sum_up_every_window(summary))
        try:
            await server.serve(sockets=self.sockets)
        finally:
            orphaned.cancel()
            summing.cancel()
            summary.flush(everything=True)
            summary.detach()
        if not server.started:
            raise SystemExit(Arbiter.WORKER_BOOT_ERROR)

    async def _stop_when_orphaned(self, server: Server) -> None:
        """An arbiter killed outright (``kill -9``) cannot stop its workers: they stop themselves.

        Otherwise they would go on serving, and holding the port, with nothing left to stop them.
        Linux tells of the parent's end through a process descriptor (no polling); elsewhere the
        worker is not watched.
        """
        if not hasattr(os, "pidfd_open"):
            return
        loop = asyncio.get_running_loop()
        parent_gone = asyncio.Event()
        try:
            pidfd = os.pidfd_open(self.ppid)  # readable once that process has ended
        except ProcessLookupError:
            pidfd = None
        except OSError:  # a kernel without process descriptors
            return
        try:
            if pidfd is not None and os.getppid() == self.ppid:  # else it ended before the open
                loop.add_reader(pidfd, parent_gone.set)
                await parent_gone.wait()
        finally:
            if pidfd is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
        log.warning("the bridge's main process is gone: worker %d stops", os.getpid())
        server.should_exit = True


async def _sum_up_every_window(summary: Summary) -> None:
    """Write the summaries of held-back lines once their minute is over, whatever comes next."""
    while True:
        await asyncio.sleep(WINDOW)
        summary.flush()


LIMITS: Final = ("idle_timeout", "keep_alive", "max_idle_per_source", "history_page_bytes", "history_threads")
"""The [bridge] settings that bound what clients may hold, published in ``/metrics``."""


def _publish_limits(settings: BridgeSettings) -> None:
    """The limits in force, in ``/metrics``: a dashboard sets counts beside their bounds.

    Also looks up, once, the gauge of waiting connections.
    """
    from radio.bridge import metrics  # noqa: PLC0415

    for name in LIMITS:
        metrics.LIMITS.labels(setting=name).set(getattr(settings, name))
    _waiting_gauge[:] = [metrics.WAITING.inc]


_EARLY_SIGNALS: list[int] = []
"""SIGINT or SIGTERM received after the bridge said it runs, before the arbiter handles signals."""


def _keep_early_signal(signum: int, _frame: object) -> None:
    _EARLY_SIGNALS.append(signum)


class _GracefulArbiter(Arbiter):  # type: ignore[misc]
    """Ctrl-C stops the workers as gracefully as SIGTERM does."""

    def init_signals(self) -> None:
        """Take over from ``_keep_early_signal``: a Ctrl-C during start-up is handled, not lost."""
        super().init_signals()
        while _EARLY_SIGNALS:
            self.signal(_EARLY_SIGNALS.pop(0), None)  # as if it arrived now

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
    """The bridge's listening socket (IPv4 or IPv6 by the host given); one line if it cannot be."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        sock = socket.create_server((listen.host, listen.port), family=family, backlog=BACKLOG)
    except OSError as exc:
        msg = f"the bridge cannot listen on {listen}: {os.strerror(exc.errno) if exc.errno else exc}"
        raise RadioError(msg) from None
    sock.set_inheritable(True)
    return sock


def _base_url(sock: socket.socket, *, https: bool) -> str:
    host, port = sock.getsockname()[:2]
    return f"{'https' if https else 'http'}://{f'[{host}]' if ':' in host else host}:{port}"


def run(
    config: str | None,
    keys: str | None,
    *,
    listen: Address | None,
    broker: list[Address] | None,
    workers: int = DEFAULT_WORKERS,
    timeout: float = 5.0,
    body_timeout: float | None = None,
    threads: int = DEFAULT_THREADS,
) -> None:
    """Serve until SIGINT or SIGTERM (gunicorn stops its workers gracefully, then exits 0)."""
    # Before anything imports the Prometheus client: it picks its storage once, at import.
    metrics_dir = tempfile.mkdtemp(prefix="radio-bridge-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from radio.bridge.identity import bridge_credentials  # noqa: PLC0415

    settings = load_settings(config, keys)
    listen = listen or settings.bridge.listen
    body_timeout = settings.bridge.body_timeout if body_timeout is None else body_timeout
    bridge_credentials(settings)
    # The workers fork from here: they inherit these.
    _BoundedHeaders.idle_timeout = settings.bridge.idle_timeout
    _BoundedHeaders.max_idle_per_source = settings.bridge.max_idle_per_source
    BridgeWorker.settings = settings.bridge
    https = {}
    if settings.tls is not None:  # HTTPS on the listen address: checked now, one line if it cannot be
        server_context(settings.tls)
        https = {"certfile": str(settings.tls.cert), "keyfile": str(settings.tls.key)}
    sock = bind(listen)
    admin = bind(settings.bridge.admin) if settings.bridge.admin is not None else None
    admin_listen = None if admin is None else admin.getsockname()[:2]  # how requests there are told apart
    # From the moment "Press Ctrl-C" is printed, a Ctrl-C must stop the bridge: kept until the
    # arbiter's own handlers are in place, rather than a KeyboardInterrupt somewhere in its start.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _keep_early_signal)
    base = _base_url(sock, https=bool(https))
    admin_base = base if admin is None else _base_url(admin, https=bool(https))
    admin_lines = f"  GET  {admin_base}/metrics{'   (admin key)' if admin is None else ''}\n" + (
        f"  admin API: {admin_base}/admin/   (admin key)\n" if settings.bridge.admin_enabled else ""
    )
    print(
        "Radio bridge running\n"
        f'  POST {base}/publish   (header API-KEY, body {{"network": ..., "data": {{...}}}})\n'
        f"  GET  {base}/healthz\n"
        f"{admin_lines}"
        f"  broker: {', '.join(f'mqtt://{b}' for b in broker or [settings.broker.mqtt])}, "
        f"{workers} workers of {threads} threads\n"
        "Press Ctrl-C to stop.",
        flush=True,
    )

    def load() -> Any:
        from radio.bridge.app import create_asgi_app  # noqa: PLC0415 - each worker builds its own app and link

        logs.setup()
        return create_asgi_app(
            {
                "RADIO_CONFIG": config,
                "RADIO_KEYS": keys,
                "BROKER": broker,
                "PUBACK_TIMEOUT": timeout,
                "ADMIN_LISTEN": admin_listen,
            },
            body_timeout=body_timeout,
            threads=threads,
        )

    def child_exit(_server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    def on_exit(_server: Any) -> None:
        shutil.rmtree(metrics_dir, ignore_errors=True)

    options = {
        "bind": [f"fd://{s.fileno()}" for s in (sock, admin) if s is not None],
        "workers": workers,
        "worker_class": "radio.bridge.run.BridgeWorker",
        # A worker's event loop answers the arbiter's heartbeat whatever its clients do.
        "timeout": max(30, int(timeout) * 3),
        "graceful_timeout": 10,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "warning",
        "proc_name": "radio-bridge",
        "child_exit": child_exit,
        "on_exit": on_exit,
        **https,
    }
    _Gunicorn(options, load).run()
