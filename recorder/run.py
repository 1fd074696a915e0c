"""``radio recorder``: the recorder as a process of its own, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import sys
from typing import Final

from radio.config import Address, load_settings
from radio.confirmations import wait_for_servers
from radio.errors import RadioError
from radio.history_store import HistoryStore
from radio.recorder.identity import ENVIRONMENT, key_file, recorder_credentials
from radio.recorder.recorder import Recorder
from radio.registry import LiveRegistry
from radio.stopping import on_signals

KEY_IN_FORCE_TIMEOUT: Final = 5.0
"""Seconds to wait, after making the service key, for the running brokers to have it in force."""


def run(
    config: str | os.PathLike[str] | None,
    keys: str | os.PathLike[str] | None,
    broker: Address | list[Address] | None = None,
) -> None:
    """Record until a signal; the banner line is printed once the subscription is granted."""
    settings = load_settings(config, keys)
    making = not os.environ.get(ENVIRONMENT) and not key_file(settings).exists()
    username, password = recorder_credentials(settings)
    if making:  # a key made just now: its first CONNECT should not race the brokers' reload
        wait_for_servers(settings.path, settings.keys_path, timeout=KEY_IN_FORCE_TIMEOUT)
    # The recorder puts a snapshot in force by reading it (which networks to keep): the watcher
    # may reload without waiting for the next sample.
    registry = LiveRegistry(config, keys, idle_after=0.0)
    brokers = [broker] if isinstance(broker, Address) else broker or [settings.broker.mqtt.local()]
    store = HistoryStore(settings.history_path)
    recorder = Recorder(registry, store, brokers, username, password)
    stop = on_signals()
    recorder.start()
    try:
        while not stop.is_set() and not recorder.subscribed.wait(0.2):
            pass
        if not stop.is_set():
            print(
                f"Recording networks/# from mqtt://{recorder.broker} into {settings.history_path}\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
        stop.wait()
    finally:
        recorder.stop()
        store.close()
    if recorder.failed is not None:  # stopped while the history could not be written
        raise RadioError(recorder.failed)
    print("recorder stopped", file=sys.stderr, flush=True)
