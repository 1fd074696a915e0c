"""``radio recorder``: the recorder as a process of its own, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

from radio.config import Address
from radio.recorder.identity import recorder_credentials
from radio.recorder.recorder import Recorder
from radio.recorder.store import HistoryStore
from radio.registry import LiveRegistry


def run(registry: LiveRegistry, broker: Address | None = None) -> None:
    """Record until a signal; the banner line is printed once the subscription is granted."""
    settings = registry.settings
    broker = broker or settings.broker.mqtt.local()
    username, password = recorder_credentials(settings)
    store = HistoryStore(settings.history_path)
    recorder = Recorder(registry, store, broker, username, password)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    recorder.start()
    try:
        while not stop.is_set() and not recorder.subscribed.wait(0.2):
            pass
        if not stop.is_set():
            print(
                f"Recording networks/# from mqtt://{broker} into {settings.history_path}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        stop.wait()
    finally:
        recorder.stop()
        store.close()
    print("recorder stopped", file=sys.stderr, flush=True)
