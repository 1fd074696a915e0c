"""``radio broker``: the embedded broker as a long-running service."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import TypedDict, Unpack

from radio.broker.compiled import delivery_path
from radio.broker.mosquitto import MosquittoBroker
from radio.broker.server import EmbeddedBroker
from radio.config import Address
from radio.errors import RadioError
from radio.registry import LiveRegistry
from radio.stopping import on_signals
from radio.urls import WEBSOCKET_PATH

BANNER_LINES = {
    "default": "  MQTT over TCP:        mqtt://{}",
    "ws": "  MQTT over WebSocket:  ws://{}" + WEBSOCKET_PATH,
    "mqtts": "  MQTT over TLS:        mqtts://{}",
    "wss": "  WebSocket over TLS:   wss://{}" + WEBSOCKET_PATH,
}
"""One line per listener, in this order; ``radio up`` and the benchmarks read the URLs."""


class Listeners(TypedDict, total=False):
    """Where ``radio broker`` listens, door by door; a door left out (or None) is the configuration's."""

    mqtt: Address | None
    websocket: Address | None
    mqtts: Address | None
    wss: Address | None


def _banner(registry: LiveRegistry, title: str, listeners: dict[str, Address], extra: str = "") -> None:
    settings = registry.settings
    networks = ", ".join(
        f"{name} ({'public' if net.public else 'private'})" for name, net in sorted(settings.networks.items())
    )
    ways_in = "".join(
        line.format(listeners[name]) + "\n" for name, line in BANNER_LINES.items() if name in listeners
    )
    certificate = (
        f"  TLS certificate:      {settings.tls.cert}\n"
        if settings.tls and ({"mqtts", "wss"} & set(listeners))
        else ""
    )
    print(
        f"{title}\n"
        f"{ways_in}{certificate}"
        f"  networks:             {networks or 'none'}\n"
        f"  keys:                 {settings.keys_path} ({len(registry.current.keys)} keys)\n"
        f"{extra}"
        "Press Ctrl-C to stop.",
        flush=True,
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop to serve on: uvloop where it is installed (Linux and macOS), else asyncio's own.

    uvloop's transports cost less per connection and per write; ``bench/RESULTS.md`` has what it
    gave. ``RADIO_EVENT_LOOP=asyncio`` chooses the standard loop, to compare or to rule it out.
    """
    if os.environ.get("RADIO_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop  # noqa: PLC0415 - optional: only where its wheel exists
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(registry: LiveRegistry, **listeners: Unpack[Listeners]) -> None:
    """``radio broker``: serve until SIGINT or SIGTERM, on the fastest event loop at hand."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(serve(registry, **listeners))


async def serve(registry: LiveRegistry, **listeners: Unpack[Listeners]) -> None:
    """Run until SIGINT or SIGTERM, then close every connection and return."""
    broker = EmbeddedBroker(registry, **listeners)
    try:
        await broker.start()
    except OSError as exc:
        where = " and ".join(str(a) for a in broker.addresses.values())
        msg = f"cannot start the broker on {where}: {exc.strerror or exc}"
        raise RadioError(msg) from None
    # What start-up made (modules, the registry) lives as long as the broker: keep the collector
    # from walking it again and again as connections come and go.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    extra = f"  delivery path:        {delivery_path()}\n"
    if (metrics := registry.settings.broker.metrics) is not None and (port := broker.metrics_port):
        extra += f"  metrics:              http://{Address(metrics.host, port).local()}/metrics\n"
    _banner(registry, "Radio broker running", broker.bound(), extra)
    try:
        await stop.wait()
    finally:
        print("Stopping the broker...", file=sys.stderr, flush=True)
        await broker.stop()


def serve_mosquitto(registry: LiveRegistry, **listeners: Unpack[Listeners]) -> int:
    """Run Mosquitto with the registry's rights until SIGINT or SIGTERM; key changes reach it live.

    A Mosquitto that dies is restarted (``MosquittoBroker``); one that will not come back ends the
    command with status 1, so that whatever runs it (systemd, a container runtime, ``radio up``)
    knows the broker is gone instead of a runner serving nothing.
    """
    folder = registry.settings.state_dir / "mosquitto"
    stop = on_signals()
    mosquitto = MosquittoBroker(registry, folder, on_failure=stop.set, **listeners)
    mosquitto.start()
    try:
        files = f"  Mosquitto files:      {folder}\n"
        _banner(registry, "Radio broker running (Mosquitto)", mosquitto.addresses, files)
        stop.wait()
    finally:
        print("Stopping the broker...", file=sys.stderr, flush=True)
        mosquitto.stop()
    if mosquitto.failed:
        print("radio: Mosquitto could not be kept running; see its log above", file=sys.stderr, flush=True)
        return 1
    return 0
