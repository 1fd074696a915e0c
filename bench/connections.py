"""Idle listeners: how many a broker holds, what each costs, and how fast one sample reaches them all.

    python bench/connections.py                        # 1,000 and 5,000 listeners; radio, stock, mosquitto
    python bench/connections.py --counts 10000         # raises its own open-file limit first
    python bench/connections.py --smoke                # 200 listeners

For each broker, N anonymous listeners connect and subscribe to one public network, 200 at a
time, from this one process. Reported: connect+subscribe rate, the broker's resident memory per
connection (its growth over N), and the time from one publish to its receipt by all N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import psutil
from fanout import Platform
from mqtt_load import handshake, now, open_connection, open_listeners

from radio import wire


async def measure(platform: Platform, count: int) -> dict[str, float]:
    """Connect ``count`` listeners, then deliver one sample to all of them."""
    received = 0
    everyone = asyncio.Event()

    def on_publish(_first: int, _body: bytes) -> None:
        nonlocal received
        received += 1
        if received == count:
            everyone.set()

    before = platform.ps.memory_info().rss
    started = now()
    connections = await open_listeners(platform.ports["tcp"], count, lambda _: on_publish, batch=200)
    connected = now() - started
    after = platform.ps.memory_info().rss
    publisher = await open_connection("tcp", platform.ports["tcp"])
    await handshake(publisher, "publisher", *platform.key)
    sent = now()
    await publisher.send(wire.publish("networks/bench", b'{"to": "everyone"}', 0, 0))
    try:
        await asyncio.wait_for(everyone.wait(), 120)
        delivered = now() - sent
    except TimeoutError:
        delivered = float("nan")
    for connection in [*connections, publisher]:
        await connection.close()
    return {
        "connect_subscribe_per_s": round(count / connected),
        "kib_per_connection": round((after - before) / count / 1024, 1),
        "deliver_to_all_ms": round(delivered * 1000, 1),
        "received": received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="1000,5000")
    parser.add_argument("--brokers", default="radio,stock,mosquitto")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    counts = [200] if args.smoke else [int(n) for n in args.counts.split(",")]
    rounds = 1 if args.smoke else args.rounds
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the brokers inherit it
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for round_, count in ((r, c) for r in range(rounds) for c in counts):
            for kind in args.brokers.split(",")[:: 1 if round_ % 2 == 0 else -1]:
                platform = Platform(kind, Path(folder), extra_broker_settings="max_connections = 0\n")
                try:
                    time.sleep(0.5)  # let the broker settle before its memory is read
                    row = {"broker": kind, "listeners": count, **asyncio.run(measure(platform, count))}
                    row["broker_rss_mib"] = round(
                        psutil.Process(platform.ps.pid).memory_info().rss / 2**20, 1
                    )
                finally:
                    platform.stop()
                rows.append(row)
                print(json.dumps({"round": round_ + 1, **row}), flush=True)
    groups: dict[tuple[str, int], list[dict[str, float]]] = {}
    for r in rows:
        groups.setdefault((str(r["broker"]), int(r["listeners"])), []).append(r)
    print("\n| broker | listeners | connect+subscribe/s (range) | KiB per connection | one sample to all |")
    print("|---|---|---|---|---|")
    for (broker, count), rs in sorted(groups.items(), key=lambda g: (g[0][1], g[0][0])):
        rate = [float(r["connect_subscribe_per_s"]) for r in rs]
        to_all = [float(r["deliver_to_all_ms"]) for r in rs]
        kib = statistics.median(float(r["kib_per_connection"]) for r in rs)
        print(
            f"| {broker} | {count:,} | {statistics.median(rate):,.0f} ({min(rate):,.0f}-{max(rate):,.0f}) "
            f"| {kib} | {statistics.median(to_all):,.0f} ms ({min(to_all):,.0f}-{max(to_all):,.0f}) |"
        )


if __name__ == "__main__":
    main()
