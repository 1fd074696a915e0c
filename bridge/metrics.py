"""Prometheus metrics of the bridge: publishes by outcome, and the time to the broker's PUBACK.

Under gunicorn every worker counts its own requests; ``radio bridge`` sets
``PROMETHEUS_MULTIPROC_DIR`` before this module is imported, so that ``/metrics`` (answered by
any one worker) adds up all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

PUBLISHES: Final = Counter(
    "radio_bridge_publishes",
    "POST /publish requests by outcome: accepted, or the reason for refusing them.",
    ["outcome"],
)
PUBACK_SECONDS: Final = Histogram(
    "radio_bridge_puback_seconds",
    "Time from receiving POST /publish to the broker's PUBACK, for accepted samples.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# Connections that send no request (bridge/run.py): what they hold, and what was closed.
WAITING: Final = Gauge(
    "radio_bridge_waiting_connections",
    "Connections open and waiting for a complete request (new, or kept alive), all workers.",
    multiprocess_mode="livesum",
)
CLOSED: Final = Counter(
    "radio_bridge_connections_closed",
    "Connections closed for sending no request: idle_timeout, or source_limit (too many waiting "
    "from one address); or for one that is not valid HTTP/1.1: invalid_request (answered 400).",
    ["reason"],
)
LIMITS: Final = Gauge(
    "radio_bridge_limit",
    "The bridge's configured limits ([bridge] in radio.toml), by setting.",
    ["setting"],
    multiprocess_mode="livemax",
)

ACCEPTED: Final = PUBLISHES.labels(outcome="accepted")
"""The accepted samples' counter, looked up once rather than per sample."""

# Usage per key (docs/access.md): what each key published, and what was refused, by reason.
SAMPLES: Final = Counter(
    "radio_key_samples", "Samples accepted, per key, door and network.", ["key", "door", "network"]
)
BYTES: Final = Counter(
    "radio_key_bytes", "Payload bytes accepted, per key, door and network.", ["key", "door", "network"]
)
REFUSALS: Final = Counter(
    "radio_key_refusals",
    "Samples refused, per key, door and reason (rights, rate, quota, schema).",
    ["key", "door", "reason"],
)


_USAGE: dict[tuple[str, str, str], tuple[Counter, Counter]] = {}


def usage(key: str, door: str, network: str) -> tuple[Counter, Counter]:
    """The samples and bytes counters of a key, door and network, looked up once per process.

    ``labels()`` builds and locks on every call; the hot path counts two of them per sample.
    """
    found = _USAGE.get((key, door, network))
    if found is None:
        labels = {"key": key, "door": door, "network": network}
        found = _USAGE[key, door, network] = (SAMPLES.labels(**labels), BYTES.labels(**labels))
    return found


class _Workers(MultiProcessCollector):
    """Every worker's file in the shared folder, but none a worker has created and not yet sized.

    A worker creates its file empty, then sizes it: a scrape between the two read an empty file
    and failed inside prometheus_client (``struct.error``), answering 500. Such a file holds no
    count yet, so it is left out; one that goes between the listing and the reading (a worker
    that ended) is listed again.
    """

    def collect(self) -> Iterable[Metric]:
        """The merged metrics of the files that hold some."""
        for _ in range(2):
            try:
                return self._merged()
            except FileNotFoundError:
                continue
        return self._merged()

    def _merged(self) -> Iterable[Metric]:
        merged: Iterable[Metric] = self.merge(_sized(Path(self._path)), accumulate=True)  # type: ignore[no-untyped-call]
        return merged


def _sized(folder: Path) -> list[str]:
    """The metric files in ``folder`` past their header (8 bytes: what a sized file starts with)."""
    files = []
    for path in folder.glob("*.db"):
        try:
            if path.stat().st_size >= 8:
                files.append(str(path))
        except OSError:
            continue
    return files


def exposition() -> tuple[bytes, str]:
    """The metrics in Prometheus text format, summed over every worker process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _Workers(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(DEFAULT_REGISTRY), CONTENT_TYPE_LATEST
