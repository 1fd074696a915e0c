"""What durability costs: QoS 1 publishes acknowledged only once on disk, against no store at all.

    python bench/durability.py                 # 3 rounds, 20,000 samples each, 64 in flight
    python bench/durability.py --smoke

One publisher sends retained QoS 1 samples (64 awaiting their PUBACK) to a network that 10
offline persistent sessions subscribe to, so every sample changes the retained value and joins
10 queues: all of it must be on disk before the PUBACK. ``persistence = "broker.db"`` (the
default: group commit, one fsync per batch) against ``persistence = false`` (nothing kept, the
PUBACK at once). Reported: acknowledged publishes per second, the broker's CPU per publish, and
the ratio on / off, round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from mqtt_load import connect_packet, handshake, open_connection, subscribe

from radio import wire

RADIO = [sys.executable, "-m", "radio"]
WINDOW = 64
SESSIONS = 10


def start(folder: Path, persistence: str) -> tuple[subprocess.Popen[str], int, str]:
    config = folder / "radio.toml"
    config.write_text(f"[broker]\npersistence = {persistence}\n[networks.bench]\npublic = true\n")
    (folder / "broker.db").unlink(missing_ok=True)
    secret_file = folder / "publisher.secret"
    if not secret_file.exists():
        add = [*RADIO, "keys", "add", "publisher", "--publish", "bench", "--config", str(config)]
        made = subprocess.run(add, capture_output=True, text=True, check=True)
        secret_file.write_text(made.stdout.strip())
    broker = subprocess.Popen(
        [*RADIO, "broker", "--config", str(config), "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert broker.stdout is not None
    for line in broker.stdout:
        if match := re.search(r"mqtt://[^:]+:(\d+)", line):
            return broker, int(match[1]), secret_file.read_text()
    msg = "the broker printed no MQTT address"
    raise RuntimeError(msg)


async def measure(port: int, secret: str, samples: int) -> float:
    for n in range(SESSIONS):  # persistent sessions that leave: every sample queues for each
        away = await open_connection("tcp", port)
        await away.send(connect_packet(f"away-{n}", clean=False))
        first, body = await asyncio.wait_for(away.packets.get(), 30)
        assert (first, body[1]) == (0x20, 0)
        await subscribe(away, "networks/bench", 1)
        await away.close()
    publisher = await open_connection("tcp", port)
    await handshake(publisher, "publisher", "publisher", secret)
    in_flight = asyncio.Semaphore(WINDOW)

    async def drain() -> None:
        while True:
            await publisher.packets.get()
            in_flight.release()

    drainer = asyncio.ensure_future(drain())
    payload = json.dumps({"pad": "x" * 180}).encode()
    started = time.perf_counter()
    for n in range(samples):
        await in_flight.acquire()
        packet = wire.publish("networks/bench", payload, 1, n % 65535 + 1)
        await publisher.send(b"\x33" + packet[1:])  # retained
    for _ in range(WINDOW):
        await in_flight.acquire()
    elapsed = time.perf_counter() - started
    drainer.cancel()
    await publisher.close()
    return samples / elapsed


def measured(broker: subprocess.Popen[Any], port: int, secret: str, samples: int) -> tuple[float, float]:
    """Publishes per second and the broker's CPU us per publish; the broker is stopped after."""
    process = psutil.Process(broker.pid)
    try:
        cpu = sum(process.cpu_times()[:2])
        rate = asyncio.run(measure(port, secret, samples))
        return rate, (sum(process.cpu_times()[:2]) - cpu) / samples * 1e6
    finally:
        broker.terminate()
        broker.wait(30)


def print_table(mode_title: str, broker_title: str, results: dict[str, list[tuple[float, float]]]) -> None:
    """One row per mode: the median rate with its range, and the median CPU per publish."""
    columns = f"{mode_title} | acknowledged publishes/s (median, range) | {broker_title} CPU us per publish"
    print(f"\n| {columns} |")
    print("|---|---|---|")
    for mode, rows in results.items():
        rates = [r for r, _ in rows]
        cpu = statistics.median(c for _, c in rows)
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"| {mode} | {statistics.median(rates):,.0f} ({spread}) | {cpu:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--smoke", action="store_true", help="one round of 500 samples")
    args = parser.parse_args()
    rounds, samples = (1, 500) if args.smoke else (args.rounds, args.samples)
    results: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                broker, port, secret = start(Path(folder), '"broker.db"' if mode == "on" else "false")
                rate, cpu_us = measured(broker, port, secret, samples)
                results[mode].append((rate, cpu_us))
                line = {"round": round_ + 1, "persistence": mode, "publishes_per_s": round(rate)}
                print(json.dumps({**line, "broker_us_per_publish": round(cpu_us, 1)}), flush=True)
    print_table("persistence", "broker", results)
    ratios = [on[0] / off[0] for on, off in zip(results["on"], results["off"], strict=True)]
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(f"\non / off, round by round: median {statistics.median(ratios):.2f} ({spread})")


if __name__ == "__main__":
    main()
