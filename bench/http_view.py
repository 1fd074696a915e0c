"""The HTTP door's parts, without a server: the Flask views, then the publisher's share of a sample.

    python bench/http_view.py            # 3 rounds of 20,000 calls of each view
    python bench/http_view.py --smoke    # 1 round of 200: checks the script still works

``bench/http_door.py`` measures the door as a whole, where the server, wrk and the broker share
the machine's two cores with it. This one takes the door apart, in one process:

- **view**: the bridge's WSGI app and the bare yardstick (``bare_flask.py``) called directly with
  the same request, round after round, interleaved; microseconds per call, and their ratio. The
  bridge's view does every check of ``POST /publish`` and leaves the PUBACK to the event loop, as
  under ``radio bridge``; the sample itself is not sent.
- **publisher**: the last step of those samples on an event loop, against the embedded broker in a
  child process (``radio broker``), 50 awaiting their PUBACK at a time: this process's CPU per
  sample, counting included (``Publisher.on_confirmed``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from bare_flask import create_app as create_bare
from http_servers import bench_home

SAMPLE = {
    "network": "bench",
    "data": {"tick": 1234, "time": "2026-11-27T10:00:00Z", "vehicles": 412, "lights": "NS-green"},
}
"""Like ``post.lua``'s: about 200 bytes."""


def environ(body: bytes, key: str, deferrable: str) -> dict[str, Any]:
    """A request as ``bridge/asgi.py`` hands it to the app."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/publish",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        deferrable: True,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "HTTP_API_KEY": key,
        "HTTP_HOST": "127.0.0.1:8000",
    }


def call(app: Any, body: bytes, key: str, deferrable: str) -> dict[str, Any]:
    """One request through a WSGI app; its environ (with what the app left there)."""
    statuses: list[str] = []
    request = environ(body, key, deferrable)
    answer = app(request, lambda status, _headers, _exc=None: statuses.append(status))
    b"".join(answer)
    getattr(answer, "close", lambda: None)()
    if statuses != ["200 OK"]:
        msg = f"the app answered {statuses}"
        raise RuntimeError(msg)
    return request


def views(bridge: Any, calls: int, rounds: int, key: str, deferrable: str) -> None:
    body = json.dumps(SAMPLE).encode()
    bare = create_bare()
    for target in (bridge, bare):
        for _ in range(min(calls, 500)):  # warm up
            call(target, body, key, deferrable)
    ratios = []
    for n in range(rounds):
        costs = {}
        for name, target in (("bridge", bridge), ("bare", bare)):
            started = time.perf_counter()
            for _ in range(calls):
                call(target, body, key, deferrable)
            costs[name] = (time.perf_counter() - started) / calls * 1e6
        ratios.append(costs["bridge"] / costs["bare"])
        timings = {f"{name}_us": round(cost, 1) for name, cost in costs.items()}
        print(json.dumps({"round": n + 1, "part": "view", **timings}))
    print(f"view: bridge / bare time per call, median {statistics.median(ratios):.2f}")


async def publishing(
    bridge: Any, samples: int, rounds: int, *, key: str, deferrable: str, deferred: str
) -> None:
    from radio.bridge.state import state_of  # noqa: PLC0415 - imported where the others are, late

    publisher = state_of(bridge).publisher
    publisher.start(asyncio.get_running_loop())
    if not await asyncio.to_thread(publisher.wait_connected, 30):
        msg = "the publisher never connected"
        raise RuntimeError(msg)
    finish = call(bridge, json.dumps(SAMPLE).encode(), key, deferrable)[deferred]
    answer = (200, [], b"")

    async def one_at_a_time(count: int) -> None:
        for _ in range(count):
            status, _, _ = await finish(answer)
            if status != 200:
                msg = f"the broker answered {status}"
                raise RuntimeError(msg)

    await asyncio.gather(*(one_at_a_time(max(samples // 500, 1)) for _ in range(50)))  # warm up
    for n in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(*(one_at_a_time(samples // 50) for _ in range(50)))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(
            json.dumps(
                {
                    "round": n + 1,
                    "part": "publisher",
                    "cpu_us_per_sample": round(cpu / samples * 1e6, 1),
                    "samples_per_s": round(samples / wall),
                }
            )
        )
    await asyncio.to_thread(publisher.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short round, to check the script works")
    args = parser.parse_args()
    calls, samples, rounds = (200, 1000, 1) if args.smoke else (20_000, 50_000, 3)

    home = Path(tempfile.mkdtemp(prefix="radio-bench-"))
    env, key = bench_home(home)
    os.environ["RADIO_CONFIG"] = env["RADIO_CONFIG"]
    # Imported once the configuration is set: the app reads it as it is made.
    from radio.bridge.app import create_app  # noqa: PLC0415
    from radio.bridge.asgi import DEFERRABLE, DEFERRED  # noqa: PLC0415
    from radio.bridge.identity import bridge_credentials  # noqa: PLC0415
    from radio.config import Address, load_settings  # noqa: PLC0415

    bridge_credentials(load_settings())  # the bridge's key exists before the broker reads the keys
    broker = subprocess.Popen(
        [sys.executable, "-m", "radio", "broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert broker.stdout is not None
        listening = (re.search(r"mqtt://127\.0\.0\.1:(\d+)", line) for line in broker.stdout)
        port = next(int(m[1]) for m in listening if m)
        bridge = create_app({"START_PUBLISHER": False, "BROKER": Address("127.0.0.1", port)})
        views(bridge, calls, rounds, key, DEFERRABLE)
        uvloop.run(publishing(bridge, samples, rounds, key=key, deferrable=DEFERRABLE, deferred=DEFERRED))
    finally:
        broker.terminate()
        broker.wait(30)


if __name__ == "__main__":
    main()
