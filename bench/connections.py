"""Idle listeners: how many a broker holds, what each costs, and how fast one sample reaches them all.

    python bench/connections.py                        # 10,000 listeners; radio and mosquitto; 5 rounds
    python bench/connections.py --counts 1000,10000 --processes 4 --rounds 7
    python bench/connections.py --smoke                # 200 listeners, one round

What is measured, and why a skeptic can accept it:

- **The broker, not the client.** The broker under test runs alone on core 0 (every thread
  pinned, as in ``bench/broker_cpu.py``); the listeners run in ``--processes`` worker processes
  (4 by default) pinned to the other cores, so no single client process bounds the connect rate
  or the time to read one sample on every socket. The load side's CPU is reported as cores used.
- **Connect rate.** The workers start together; each opens its share of the anonymous listeners,
  200 at a time (CONNECT, CONNACK, SUBSCRIBE, SUBACK). The rate is N over the time from the first
  worker's start to the last worker's last SUBACK.
- **Memory per listener.** The broker's resident memory after the listeners subscribed minus
  before, over N (for ``mosquitto``: the Mosquitto process, not Radio's runner).
- **One sample to all.** One publisher sends one QoS 0 sample; each worker stamps the wall clock
  when its last listener has it. The figure is the latest stamp minus the time the sample was
  handed to the publisher's socket. A listener that never gets it is loss: the row says
  ``lost: N`` and gives no time.
- **Rounds.** Every round runs each broker fresh, the order alternating round by round; every
  row is printed as a JSON line and the summary gives the median and the range over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import psutil
from broker_cpu import BROKER_CORE, pin
from fanout import Platform
from mqtt_load import handshake, open_connection, open_listeners

from radio import wire

TOPIC = "networks/bench"
SAMPLE = b'{"to": "everyone"}'
WAIT_S = 120.0
ONE_ADDRESS = (
    "max_connections = 0\n"
    "anonymous_max_connections_per_address = 1000000\n"
    "max_connecting_per_address = 1000000\n"
)
"""Every listener comes from 127.0.0.1 here: the per-address caps that guard against one abusive
address are raised, or they would refuse the benchmark's own listeners."""


def _raise_open_files() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def worker(port: int, count: int, offset: int, pipe: Pipe, cores: set[int]) -> None:
    """Open ``count`` listeners when told, report when connected, then when the sample reached them all."""
    if cores:
        os.sched_setaffinity(0, cores)
    _raise_open_files()

    async def run() -> None:
        received = 0
        last = 0.0
        everyone = asyncio.Event()

        def on_publish(_index: int):  # noqa: ANN202 - the callback type is mqtt_load's
            def handle(_first: int, _body: bytes) -> None:
                nonlocal received, last
                received += 1
                last = time.time()
                if received == count:
                    everyone.set()

            return handle

        pipe.recv()  # go
        started = time.time()
        connections = await open_listeners(port, count, on_publish, batch=200, first_index=offset)
        pipe.send(("connected", started, time.time()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everyone.wait(), WAIT_S)
        pipe.send(("received", received, last))
        pipe.recv()  # done
        for connection in connections:
            await connection.close()

    asyncio.run(run())


async def _publish_one(port: int, key: tuple[str | None, str | None]) -> float:
    publisher = await open_connection("tcp", port)
    await handshake(publisher, "publisher", *key)
    sent = time.time()
    await publisher.send(wire.publish(TOPIC, SAMPLE, 0, 0))
    await publisher.close()
    return sent


def _load_cpu(processes: list[psutil.Process]) -> float:
    total = time.process_time()
    for p in processes:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def measure(kind: str, folder: Path, count: int, processes: int, load_cores: set[int]) -> dict[str, Any]:
    """One round on one fresh broker pinned to core 0."""
    platform = Platform(kind, folder, extra_broker_settings=ONE_ADDRESS)
    if load_cores:
        pin(platform.ps, {BROKER_CORE})
    workers: list[tuple[mp.Process, Pipe]] = []
    try:
        time.sleep(0.5)  # the broker's start-up allocations settle before its memory is read
        shares = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
        offsets = [sum(shares[:i]) for i in range(processes)]
        for share, offset in zip(shares, offsets, strict=True):
            mine, theirs = mp.Pipe()
            process = mp.Process(
                target=worker, args=(platform.ports["tcp"], share, offset, theirs, load_cores)
            )
            process.start()
            workers.append((process, mine))
        loads = [psutil.Process(p.pid) for p, _ in workers]
        before = platform.ps.memory_info().rss
        broker0, load0 = platform.cpu(), _load_cpu(loads)
        wall0 = time.time()
        for _, pipe in workers:
            pipe.send("go")
        connected = [pipe.recv() for _, pipe in workers]
        connect_s = max(c[2] for c in connected) - min(c[1] for c in connected)
        after = platform.ps.memory_info().rss
        sent = asyncio.run(_publish_one(platform.ports["tcp"], platform.key))
        arrivals = [pipe.recv() for _, pipe in workers]
        received = sum(a[1] for a in arrivals)
        broker_s, load_s, wall = platform.cpu() - broker0, _load_cpu(loads) - load0, time.time() - wall0
        rss = platform.ps.memory_info().rss
        for _, pipe in workers:
            pipe.send("done")
        for process, _ in workers:
            process.join(60)
    finally:
        for process, _ in workers:
            if process.is_alive():
                process.kill()
        platform.stop()
    lost = count - received
    return {
        "broker": kind,
        "listeners": count,
        "processes": processes,
        "connect_subscribe_per_s": round(count / connect_s),
        "kib_per_connection": round((after - before) / count / 1024, 2),
        "deliver_to_all_ms": None if lost else round((max(a[2] for a in arrivals) - sent) * 1000, 1),
        "received": received,
        "lost": lost,
        "broker_rss_mib": round(rss / 2**20, 1),
        "broker_cores": round(broker_s / wall, 2),
        "load_cores": round(load_s / wall, 2),
        "load_cores_available": len(load_cores) or os.cpu_count() or 1,
    }


def _range(values: list[float], unit: str = "") -> str:
    if not values:
        return "no figure"
    return f"{statistics.median(values):,.1f}{unit} ({min(values):,.1f} to {max(values):,.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", default="10000")
    parser.add_argument("--brokers", default="radio,mosquitto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=4, help="listener processes")
    parser.add_argument("--smoke", action="store_true", help="200 listeners, one round")
    args = parser.parse_args()
    counts = [200] if args.smoke else [int(n) for n in args.counts.split(",")]
    rounds = 1 if args.smoke else args.rounds
    _raise_open_files()  # the brokers inherit it
    cores = os.sched_getaffinity(0)
    load_cores = cores - {BROKER_CORE} if len(cores) > 1 and BROKER_CORE in cores else set()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            for count in counts:
                for kind in args.brokers.split(",")[:: 1 if round_ % 2 == 0 else -1]:
                    row = measure(kind, Path(folder), count, args.processes, load_cores)
                    rows.append(row)
                    print(json.dumps({"round": round_ + 1, **row}), flush=True)
    print(
        "\n| broker | listeners | connect+subscribe/s | KiB per listener | one sample to all, ms "
        "| lost (all rounds) | load cores used |"
    )
    print("|---|---|---|---|---|---|---|")
    for count in counts:
        for kind in args.brokers.split(","):
            rs = [r for r in rows if r["broker"] == kind and r["listeners"] == count]
            times = [float(r["deliver_to_all_ms"]) for r in rs if r["deliver_to_all_ms"] is not None]
            print(
                f"| {kind} | {count:,} | {_range([float(r['connect_subscribe_per_s']) for r in rs])} "
                f"| {_range([float(r['kib_per_connection']) for r in rs])} | {_range(times)} "
                f"| {sum(int(r['lost']) for r in rs)} "
                f"| {_range([float(r['load_cores']) for r in rs])} of {rs[0]['load_cores_available']} |"
            )


if __name__ == "__main__":
    main()
