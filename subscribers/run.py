"""``radio listen NETWORK...``: one JSON line per sample on stdout, for pipes and ``jq``."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence

from radio.stopping import on_signals
from radio.subscribers.listener import Listener, Refused
from radio.tls import SYSTEM_TRUST, Trust
from radio.urls import DEFAULT_MQTT_VERSION, MqttVersion


def listen(
    networks: Sequence[str],
    url: str,
    secret: str | None,
    *,
    since: int | None = None,
    http: str = "",
    trust: Trust = SYSTEM_TRUST,
    version: MqttVersion = DEFAULT_MQTT_VERSION,
    check_rights: Callable[[], None] | None = None,
) -> int:
    """Print samples until Ctrl-C or SIGTERM (exit 0); a refusal is one line and exit 2.

    With ``since``, the history after that number first (from the bridge at ``http``), then live.
    """

    def notice(text: str) -> None:
        print(f"radio listen: {text}", file=sys.stderr, flush=True)

    listener = Listener(
        networks,
        url,
        secret,
        notice=notice,
        since=since,
        http=http,
        trust=trust,
        version=version,
        check_rights=check_rights,
    )
    stopping = on_signals()  # Ctrl-C or SIGTERM: the listener stops, and the loop below ends

    def stop_when_asked() -> None:
        stopping.wait()
        listener.stop()

    threading.Thread(target=stop_when_asked, daemon=True).start()
    listener.start()
    try:
        for sample in listener:
            try:
                line = sample.to_json()
            except (RecursionError, ValueError):  # parsed, but too deep to write out again
                notice(f"skipped a sample on {sample.topic}: nested too deep to print")
                continue
            print(line, flush=True)
    except Refused as exc:
        print(f"radio: {exc}", file=sys.stderr, flush=True)
        return 2
    except BrokenPipeError:  # the reader of the pipe went away (`| head`): that is a normal end
        # Nothing more can be written; without this, the exit's final flush fails again (status 120).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0
