"""A publish that returns only once the broker has the sample, over the bridge's one connection to it.

The bridge's promise is that a 200 means the broker has the sample and a 503 means the caller
should retry. So a sample is never left queued to go out later, after its request was answered
503: a publish attempted while the connection is down fails at once, a connection that drops fails
every publish still waiting for its PUBACK, and nothing is ever resent (clean session, no
redelivery).

The connection (``bridge/broker_connection.py``: CONNECT, keep-alive, failover) runs on an event
loop. Request threads hand it PUBLISHes with ``call_soon_threadsafe`` and wait on a future;
every PUBLISH handed over in one turn of the loop goes out in one write, and every PUBACK that
arrived in one read is handled at once. This is the bridge's hot path: a general-purpose client
spent more per sample than Flask did (bench/RESULTS.md, "HTTP door").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Final

from radio import wire
from radio.bridge.broker_connection import BrokerConnection
from radio.config import Address
from radio.errors import RadioError

log = logging.getLogger("radio.bridge")

UNREACHABLE: Final = "the broker is unreachable: nothing was published, retry later"


class BrokerUnavailable(RadioError):
    """The sample was not published: the broker is unreachable or did not confirm in time."""


def _caller_cancelled() -> bool:
    """Whether the running task itself is being cancelled: not a PUBACK deadline that passed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _expire(done: asyncio.Future[None]) -> None:
    """The timeout of an awaited PUBACK: the waiter sees its future cancelled."""
    if not done.done():
        done.cancel()


class Publisher:
    """Publishes samples at QoS 1 over this process's connection to the broker, under the bridge's own key."""

    def __init__(
        self,
        broker: Address | Sequence[Address],
        username: str,
        password: str,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.broker_connection = BrokerConnection(
            [broker] if isinstance(broker, Address) else broker,
            username,
            password,
            tls=tls,
            on_acknowledged=self._confirm,
            on_lost=self._drop_waiting,
        )
        self.timeout = timeout
        self._waiting: dict[int, tuple[Future[None] | asyncio.Future[None], object]] = {}
        """Samples sent and not yet acknowledged, by packet id: the caller's future, and what it
        gave with the sample (handed back to ``on_confirmed``)."""
        self.on_confirmed: Callable[[list[object]], None] | None = None
        """Called on the connection's loop once per read from the broker, with the receipts of the
        samples it confirmed: before any of their callers resumes, so what it counts is counted first."""
        self._confirmed: list[tuple[Future[None] | asyncio.Future[None], object]] = []
        self._next_id = 0
        self._outgoing: list[bytes] = []
        self._due: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        """Samples awaited on the connection's loop, by deadline (``_expire_at``)."""
        self._sweep: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect in the background; publishing waits (up to the timeout) for the connection.

        Under ``radio bridge`` it runs on the worker's own event loop (``loop``, from its running
        thread); without one, on an event loop in a thread of its own.
        """
        self.broker_connection.start(loop)

    def stop(self) -> None:
        """Say DISCONNECT and close the connection (from any thread but the connection's own loop)."""
        self.broker_connection.stop()

    @property
    def broker(self) -> Address:
        """The broker connected to (or tried next)."""
        return self.broker_connection.broker

    @property
    def connected(self) -> bool:
        """Whether the connection to the broker is up right now."""
        return self.broker_connection.connected

    def wait_connected(self, timeout: float) -> bool:
        """Whether the connection came up within ``timeout`` seconds."""
        return self.broker_connection.wait_connected(timeout)

    def publish(self, topic: str, payload: bytes, retain: bool, receipt: object = None) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it; else BrokerUnavailable."""
        deadline = time.monotonic() + self.timeout
        loop = self.broker_connection.loop
        if not self.broker_connection.wait_connected(self.timeout) or loop is None:
            raise BrokerUnavailable(UNREACHABLE)
        done: Future[None] = Future()
        try:
            loop.call_soon_threadsafe(
                functools.partial(
                    self._send, topic.encode(), payload, retain, done, deadline, receipt=receipt
                )
            )
        except RuntimeError:  # the loop is closed: the publisher was stopped
            raise BrokerUnavailable(UNREACHABLE) from None
        try:
            done.result(max(deadline - time.monotonic(), 0.001))
        except FutureTimeout:
            if not done.cancel():  # its PUBACK is being handled this very moment: that answer stands
                done.result()
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._unconfirmed, done)
            raise BrokerUnavailable(self._not_confirmed()) from None

    async def publish_async(self, topic: str, payload: bytes, retain: bool, receipt: object = None) -> None:
        """``publish`` on the connection's own loop (``radio bridge``: the worker's): no thread waits."""
        deadline = time.monotonic() + self.timeout
        loop = asyncio.get_running_loop()
        connection = self.broker_connection
        if connection.loop is None:
            raise BrokerUnavailable(UNREACHABLE)
        if loop is not connection.loop:
            msg = "publish_async runs on the connection's own loop (start(loop)); from any other, use publish"
            raise RuntimeError(msg)
        if not connection.connected and not await connection.comes_up(self.timeout):
            raise BrokerUnavailable(UNREACHABLE)
        done = loop.create_future()
        self._send(topic.encode(), payload, retain, done, deadline, receipt=receipt)
        if not done.done():
            self._expire_at(loop, deadline, done)
        try:
            await done
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            self._unconfirmed(done)
            raise BrokerUnavailable(self._not_confirmed()) from None

    def _expire_at(
        self, loop: asyncio.AbstractEventLoop, deadline: float, done: asyncio.Future[None]
    ) -> None:
        """Cancel ``done`` if it is still waiting at ``deadline``.

        Every sample has the same timeout, so deadlines come in order: they queue up, and one timer
        at the earliest expires what is due, where a timer per sample was made and cancelled on the
        worker's busy loop for every request. Samples answered meanwhile leave the front of the
        queue as new ones join it; one that comes out of order (it waited for the link) gets a
        timer of its own.
        """
        due = self._due
        while due and due[0][1].done():
            due.popleft()
        if due and deadline < due[-1][0]:
            # Out of order (it waited for the link while later samples went ahead): a timer of its own.
            loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, done)
            return
        due.append((deadline, done))
        if self._sweep is None:
            self._sweep = loop.call_later(max(deadline - time.monotonic(), 0.0), self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        due, now = self._due, time.monotonic()
        while due and (due[0][0] <= now or due[0][1].done()):
            _expire(due.popleft()[1])
        if due:
            self._sweep = loop.call_later(max(due[0][0] - now, 0.0), self._expire_due, loop)

    def _not_confirmed(self) -> str:
        return f"the broker did not confirm the sample within {self.timeout:g} s: retry later"

    # On the connection's event loop from here on.

    def _send(
        self,
        topic: bytes,
        payload: bytes,
        retain: bool,
        done: Future[None] | asyncio.Future[None],
        deadline: float,
        *,
        receipt: object = None,
    ) -> None:
        if done.done():  # its caller gave up (timed out) before the loop got to it
            return
        if time.monotonic() >= deadline:
            # Handed over too late (a busy loop, a link just back): sending it now would publish a
            # sample whose request is answered 503.
            done.set_exception(
                BrokerUnavailable("the broker link was busy: nothing was published, retry later")
            )
            return
        if not self.broker_connection.ready:
            done.set_exception(
                BrokerUnavailable("the broker link dropped: nothing was published, retry later")
            )
            return
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                break
        else:
            done.set_exception(BrokerUnavailable("too many samples waiting for the broker: retry later"))
            return
        self._waiting[self._next_id] = (done, receipt)
        if not self._outgoing:
            # Everything handed over before the loop gets back to this goes out in one write.
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(wire.publish(topic, payload, 1, self._next_id, retain=retain))

    def _flush(self) -> None:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        self.broker_connection.write(data)

    def _unconfirmed(self, done: Future[None] | asyncio.Future[None]) -> None:
        """A sample went unacknowledged past the timeout and its request was answered 503.

        The link is dropped at once (a TCP reset): nothing more goes to a broker that stopped
        answering. What was sent cannot be taken back: a stalled broker still reads what its
        socket received before the reset, and publishes it when it wakes. The answer to a sample
        the broker did not confirm in time is "retry", and a retried sample may reach listeners
        twice (docs/http-door.md).
        """
        if not any(waiting is done for waiting, _ in self._waiting.values()):
            return  # never sent (handed over too late), or answered meanwhile: the link is fine
        self.broker_connection.reset(f"a sample was not confirmed within {self.timeout:g} s")

    def _acknowledged(self, packet_id: int) -> None:
        done, receipt = self._waiting.pop(packet_id, (None, None))
        if done is None or done.done():
            return  # answered already: timed out (503)
        if isinstance(done, Future) and not done.set_running_or_notify_cancel():
            return  # its thread gave up (503) just now; from here on it can no longer
        self._confirmed.append((done, receipt))

    def _confirm(self, packet_ids: list[int]) -> None:
        """What one read from the broker acknowledged."""
        for packet_id in packet_ids:
            self._acknowledged(packet_id)
        self._report_confirmed()

    def _report_confirmed(self) -> None:
        """Count what one read confirmed (``on_confirmed``), then let the waiting callers go on.

        Counted first, so that no caller answers 200 for a sample not yet in the counts.
        """
        confirmed, self._confirmed = self._confirmed, []
        if not confirmed:
            return
        receipts = [receipt for _, receipt in confirmed if receipt is not None]
        if receipts and self.on_confirmed is not None:
            try:
                self.on_confirmed(receipts)
            except Exception:
                log.exception("counting confirmed samples failed")
        for done, _ in confirmed:
            if not done.done():
                done.set_result(None)

    def _drop_waiting(self) -> None:
        """Every sample still unacknowledged is answered 503: it must never go out later."""
        waiting, self._waiting = self._waiting, {}
        self._outgoing.clear()
        self._due.clear()  # every one of them is answered below
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for done, _ in waiting.values():
            if done.done():
                continue  # answered already: timed out (503)
            if isinstance(done, Future) and not done.set_running_or_notify_cancel():
                continue  # its thread gave up just now
            done.set_exception(BrokerUnavailable("the broker link dropped: retry later"))
        if waiting:
            log.warning("dropped %d unconfirmed samples, answered 503", len(waiting))
