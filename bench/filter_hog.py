"""One client with thousands of wildcard filters: does everyone else still get their samples?

    python bench/filter_hog.py                          # 10,000 filters, 100 subscribers, 3 rounds
    python bench/filter_hog.py --brokers radio,mosquitto --filters 10000
    python bench/filter_hog.py --smoke

An anonymous client subscribes ``--filters`` distinct wildcard filters (``networks/+/hog<i>/#``,
one SUBSCRIBE each; the embedded broker grants ``max_filters``, 100 by default, and refuses the
rest) and stays connected; then the fan-out measurement of ``bench/fanout.py`` runs (QoS 0, N
subscribers on one network). Each round measures the same broker kind without the hog and with
it, alternately; the figure is the ratio of deliveries per second, with over without.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
from pathlib import Path

from fanout import Platform, measure, messages_for
from mqtt_load import Connection, handshake, open_connection

from radio import wire


async def hog(port: int, filters: int) -> tuple[Connection, int]:
    """An anonymous client holding as many of ``filters`` wildcard filters as the broker grants."""
    connection = await open_connection("tcp", port)
    await handshake(connection, "hog")
    for start in range(0, filters, 500):
        batch = range(start, min(start + 500, filters))
        for i in batch:
            await connection.send(wire.subscribe(i % 65535 + 1, [(f"networks/+/hog{i}/#", 0)]))
    granted = 0
    for _ in range(filters):
        first, body = await asyncio.wait_for(connection.packets.get(), 60)
        granted += first == 0x90 and body[2] == 0
    return connection, granted


async def run(platform: Platform, filters: int, subscribers: int, messages: int) -> tuple[float, int]:
    held, granted = (None, 0) if not filters else await hog(platform.ports["tcp"], filters)
    try:
        result = await measure(platform, "tcp", 0, subscribers, messages)
    finally:
        if held is not None:
            await held.close()
    return result.deliveries_per_s, granted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--filters", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--brokers", default="radio")
    parser.add_argument("--smoke", action="store_true", help="200 filters, 10 subscribers, one round")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rounds, filters, subscribers = (
        (1, 200, 10) if args.smoke else (args.rounds, args.filters, args.subscribers)
    )
    messages = messages_for(subscribers, args.smoke)
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            for kind in args.brokers.split(","):
                rates = {}
                for held in (0, filters) if round_ % 2 == 0 else (filters, 0):
                    platform = Platform(kind, Path(folder))
                    try:
                        rates[held], granted = asyncio.run(run(platform, held, subscribers, messages))
                    finally:
                        platform.stop()
                    line = {"round": round_ + 1, "broker": kind, "hog_filters": held, "granted": granted}
                    print(json.dumps({**line, "deliveries_per_s": rates[held]}), flush=True)
                ratios.setdefault(kind, []).append(rates[filters] / rates[0] if rates[0] else 0.0)
    print("\n| broker | filters asked | deliveries/s with the hog / without (median, range) |")
    print("|---|---|---|")
    for kind, values in ratios.items():
        spread = f"{min(values):.2f}-{max(values):.2f}"
        print(f"| {kind} | {filters:,} | {statistics.median(values):.2f} ({spread}) |")
    if args.smoke and not all(ratios.values()):
        msg = "a measurement delivered nothing"
        raise SystemExit(msg)


if __name__ == "__main__":
    main()
