"""The broker's Prometheus metrics: deliveries, drops, queues and connections, read on each scrape.

The broker counts in plain integers (``router.Stats``) as it works; this collector reads them,
and walks the sessions for queue depths, only when Prometheus asks. Served on a thread of its
own at ``[broker] metrics = "HOST:PORT"`` (off by default), like the bridge's ``/metrics``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from radio.broker.per_source import CONNECTING
from radio.config import Address

if TYPE_CHECKING:
    from radio.broker.core import RadioBroker


class BrokerCollector(Collector):
    """Reads a running broker's counters when scraped."""

    def __init__(self, broker: RadioBroker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Any]:
        """One scrape's worth of metrics."""
        router = self.broker.router
        stats = router.stats
        counters = {
            "radio_broker_published": ("Samples accepted from publishers.", stats.published),
            "radio_broker_deliveries": ("Samples written to subscribers.", stats.deliveries),
            "radio_broker_refused_publishes": (
                "Samples the admission gate dropped (rights, size, JSON, schema, quota, wills over a rate).",
                router.gate.refused if router.gate is not None else 0,
            ),
        }
        for name, (text, value) in counters.items():
            yield CounterMetricFamily(name, text, value=value)
        dropped = CounterMetricFamily(
            "radio_broker_dropped", "Samples not delivered, by reason.", labels=["reason"]
        )
        dropped.add_metric(["slow_subscriber"], stats.dropped_slow)
        dropped.add_metric(["queue_full"], stats.dropped_queue_full)
        dropped.add_metric(["no_longer_readable"], stats.dropped_unreadable)
        yield dropped
        yield from _send_buffers(self.broker)
        yield from _limits(self.broker)
        sessions = list(router.sessions.values())
        yield GaugeMetricFamily(
            "radio_broker_connections", "Open connections.", value=len(self.broker.connections)
        )
        yield GaugeMetricFamily("radio_broker_sessions", "Sessions, connected or not.", value=len(sessions))
        yield GaugeMetricFamily(
            "radio_broker_queued",
            "Samples waiting in session queues.",
            value=sum(s.queued for s in sessions),
        )
        yield GaugeMetricFamily(
            "radio_broker_inflight",
            "Samples sent and not yet acknowledged.",
            value=sum(len(s.inflight) for s in sessions),
        )
        yield GaugeMetricFamily("radio_broker_retained", "Retained samples.", value=len(router.retained))
        yield from _usage(self.broker)
        store = self.broker.store
        if store is not None:
            yield CounterMetricFamily(
                "radio_broker_store_batches", "Store transactions.", value=store.batches
            )
            yield GaugeMetricFamily(
                "radio_broker_store_failing", "1 while the store cannot be written.", value=int(store.failing)
            )
            yield CounterMetricFamily(
                "radio_broker_store_compactions",
                "Times the store gave space back (WAL checkpointed and truncated, free pages vacuumed).",
                value=store.compactions,
            )


def _send_buffers(broker: RadioBroker) -> Iterator[Any]:
    """Bytes waiting for clients, and the room granted for bursts (broker/output.py)."""
    buffers = broker.send_buffers
    yield GaugeMetricFamily(
        "radio_broker_send_buffered_bytes",
        "Bytes waiting to be written to clients, in all.",
        value=sum(connection.waiting for connection in list(broker.connections)),
    )
    yield GaugeMetricFamily(
        "radio_broker_send_buffer_granted_bytes",
        "Room granted beyond [broker] send_buffer to clients that keep up, in all (<= send_buffer_total).",
        value=buffers.granted,
    )
    refused = CounterMetricFamily(
        "radio_broker_send_buffer_refused",
        "Times a client that keeps up was held to its room by a bound, by bound.",
        labels=["limit"],
    )
    refused.add_metric(["send_buffer_max"], buffers.refused_most)
    refused.add_metric(["send_buffer_total"], buffers.refused_total)
    yield refused


def _limits(broker: RadioBroker) -> Iterator[Any]:
    """What the per-source limits hold and refuse (broker/per_source.py), retained caps, log summaries."""
    router = broker.router
    anonymous = router.anonymous
    refused = CounterMetricFamily(
        "radio_broker_refused_connects",
        "CONNECTs refused by a cap on anonymous clients, a key's clients or persistent sessions, by cap.",
        labels=["reason"],
    )
    refused.add_metric(["anonymous_connections_per_address"], router.anonymous_connections.refused)
    refused.add_metric(["sessions_per_key"], router.keyed.refused)
    refused.add_metric(["connections_per_key"], router.key_connections.refused)
    for reason in (
        "anonymous_sessions",
        "anonymous_sessions_per_address",
        "anonymous_total_queued_bytes",
        "anonymous_queued_bytes_per_address",
    ):
        refused.add_metric([reason], anonymous.refused[reason])
    yield refused
    shared = router.shared_by_source
    subscriptions = CounterMetricFamily(
        "radio_broker_refused_subscriptions",
        "Subscriptions refused by a per-source cap, by cap.",
        labels=["reason"],
    )
    subscriptions.add_metric(["shared_per_source"], shared.refused)
    yield subscriptions
    yield GaugeMetricFamily(
        "radio_broker_shared_subscriptions", "Shared subscriptions held, by every source.", value=len(shared)
    )
    yield GaugeMetricFamily(
        "radio_broker_anonymous_sessions", "Anonymous persistent sessions held.", value=len(anonymous)
    )
    yield GaugeMetricFamily(
        "radio_broker_anonymous_queued_bytes",
        "Bytes queued for anonymous persistent sessions.",
        value=anonymous.queued_bytes(),
    )
    sockets = CounterMetricFamily(
        "radio_broker_refused_sockets", "Sockets closed at once, by reason.", labels=["reason"]
    )
    sockets.add_metric([CONNECTING], broker.connecting.refused)
    yield sockets
    yield GaugeMetricFamily(
        "radio_broker_connecting",
        "Sockets that have not completed their CONNECT.",
        value=len(broker.connecting),
    )
    yield CounterMetricFamily(
        "radio_broker_refused_retained",
        "Publishes refused because they would retain one topic more than their network's max_retained.",
        value=router.gate.refused_retained if router.gate is not None else 0,
    )
    yield CounterMetricFamily(
        "radio_broker_log_lines_summarised",
        "Log lines held back past [broker] log_repeats per minute, each kind summed up in one line.",
        value=broker.log_summary.suppressed,
    )


def _usage(broker: RadioBroker) -> Iterator[Any]:
    """Per key: samples, bytes and refusals on the MQTT door (the bridge exports the HTTP door's)."""
    meter, gate = broker.meter, broker.router.gate
    if gate is not None:
        yield CounterMetricFamily(
            "radio_broker_rate_waits",
            "Times a publisher was paused for its key's rate.",
            value=gate.rate_waits,
        )
    if meter is None:
        return
    labels = ["key", "door", "network"]
    samples = CounterMetricFamily(
        "radio_key_samples", "Samples accepted, per key, door and network.", labels=labels
    )
    sizes = CounterMetricFamily(
        "radio_key_bytes", "Payload bytes accepted, per key, door and network.", labels=labels
    )
    for (key, door, network), (count, size) in list(meter.totals.items()):
        samples.add_metric([key, door, network], count)
        sizes.add_metric([key, door, network], size)
    refusals = CounterMetricFamily(
        "radio_key_refusals", "Samples refused, per key, door and reason.", labels=["key", "door", "reason"]
    )
    for (key, door, reason), count in list(meter.refused.items()):
        refusals.add_metric([key, door, reason], count)
    received = CounterMetricFamily(
        "radio_key_received_samples",
        "Samples delivered to a key as a listener, per key and network.",
        labels=["key", "network"],
    )
    received_bytes = CounterMetricFamily(
        "radio_key_received_bytes",
        "Payload bytes delivered to a key as a listener, per key and network.",
        labels=["key", "network"],
    )
    for (key, network), (count, size) in list(meter.received_totals.items()):
        received.add_metric([key, network], count)
        received_bytes.add_metric([key, network], size)
    yield from (samples, sizes, refusals, received, received_bytes)


class MetricsServer:
    """The HTTP server behind ``[broker] metrics``."""

    def __init__(self, server: Any, thread: Any) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_port)

    def shutdown(self) -> None:
        """Stop serving, at once.

        The server looks for a stop between connections, or every half second: a connection of
        our own wakes it now, and a broker stops without waiting out that half second.
        """
        stopping = threading.Thread(target=self._server.shutdown, name="radio-metrics-stop", daemon=True)
        stopping.start()
        address = self._server.server_address[:2]
        for _ in range(100):  # until the stop is seen: a wake before it is asked would be lost
            with contextlib.suppress(OSError), socket.create_connection(address, timeout=1):
                pass
            stopping.join(timeout=0.05)
            if not stopping.is_alive():
                break
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(broker: RadioBroker, address: Address) -> MetricsServer:
    """Serve a broker's metrics at an address (port 0 picks a free one)."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    server, thread = start_http_server(address.port, address.host, registry=registry)
    return MetricsServer(server, thread)
