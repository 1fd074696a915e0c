"""Slow clients against the HTTP door: do normal publishers still get through, and how fast?

    python bench/slow_clients.py                          # radio bridge: 300 slow clients, 60 s
    python bench/slow_clients.py --server sync --slow 2 --seconds 20
    python bench/slow_clients.py --smoke                  # 20 slow clients, 3 s, body_timeout 1.5 s

``--slow`` connections each send a request line, then one header line every ``--interval``
seconds, never finishing their headers; ``--stalled`` more send whole headers and a body shorter
than their ``Content-Length``. Meanwhile one normal publisher POSTs a sample every 0.1 s on a new
connection (5 s timeout) and records each answer and its latency. Prints a JSON summary: normal
POSTs sent, answered 200, failed, latency p50/p99/max, and what the stalled clients were answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from http_servers import SERVERS, bench_home, serve_bridge, start

SAMPLE = json.dumps({"network": "bench", "data": {"tick": 1, "vehicles": 412, "lights": "NS-green"}})


async def trickle(host: str, port: int, seconds: float, interval: float, opened: list[int]) -> None:
    """Headers one line at a time, never done; stops after ``seconds``."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    opened[0] += 1
    deadline = time.monotonic() + seconds
    try:
        writer.write(b"POST /publish HTTP/1.1\r\nHost: bench\r\n")
        n = 0
        while time.monotonic() < deadline:
            await writer.drain()
            await asyncio.sleep(interval)
            n += 1
            writer.write(b"X-Slow-%d: %d\r\n" % (n, n))
    except OSError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        del reader


async def stall(host: str, port: int, key: str, seconds: float, answers: list[str]) -> None:
    """Whole headers, half a body, then silence: what does the server answer, and when?"""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    started = time.monotonic()
    writer.write(
        b"POST /publish HTTP/1.1\r\nHost: bench\r\nAPI-KEY: "
        + key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    try:
        head = await asyncio.wait_for(reader.readline(), timeout=max(seconds, 15.0))
        status = head.decode(errors="replace").split(" ")[1] if head else "closed"
    except (TimeoutError, OSError, IndexError):
        status = "none"
    answers.append(f"{status} after {time.monotonic() - started:.1f} s")
    writer.close()


def normal_posts(host: str, port: int, key: str, seconds: float) -> list[tuple[int, float]]:
    """A well-behaved publisher: one POST every 0.1 s, each on a new connection."""
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("POST", "/publish", SAMPLE, {"API-KEY": key, "Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
        except (OSError, http.client.HTTPException):
            status = 0
        results.append((status, time.monotonic() - started))
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    return results


async def attack(url: str, key: str, args: argparse.Namespace) -> dict[str, object]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    opened = [0]
    answers: list[str] = []
    tasks = [
        asyncio.create_task(trickle(host, int(port), args.seconds, args.interval, opened))
        for _ in range(args.slow)
    ]
    tasks += [
        asyncio.create_task(stall(host, int(port), key, args.seconds, answers)) for _ in range(args.stalled)
    ]
    await asyncio.sleep(min(2.0, args.seconds / 4))  # the slow ones connect first
    results = await asyncio.to_thread(normal_posts, host, int(port), key, args.seconds)
    await asyncio.gather(*tasks)
    ok = [latency for status, latency in results if status == 200]
    latencies = sorted(latency for _, latency in results)
    return {
        "server": args.server,
        "engine": args.engine,
        "slow_clients": args.slow,
        "slow_connected": opened[0],
        "seconds": args.seconds,
        "normal_posts": len(results),
        "answered_200": len(ok),
        "failed": len(results) - len(ok),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
        "stalled_answers": sorted(set(answers)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20 slow clients for 3 s")
    parser.add_argument("--server", choices=SERVERS, default="radio")
    parser.add_argument("--engine", choices=["embedded", "mosquitto"], default="embedded")
    parser.add_argument("--slow", type=int, default=300, help="connections trickling headers")
    parser.add_argument("--stalled", type=int, default=1, help="connections stalling mid-body")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between header lines")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    if args.smoke:
        args.slow, args.seconds, args.interval = 20, 3.0, 1.0

    home = Path(tempfile.mkdtemp(prefix="radio-bench-"))
    env, key = bench_home(home)
    if args.smoke:  # the stalled client's 408 within the smoke run, not after the default 10 s
        with (home / "radio.toml").open("a") as config:
            config.write("\n[bridge]\nbody_timeout = 1.5\n")
    broker, mqtt = start(
        [
            sys.executable,
            "-m",
            "radio",
            "broker",
            *("--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"),
            "--engine",
            args.engine,
        ],
        r"mqtt://127\.0\.0\.1:(\d+)",
        env,
    )
    served = serve_bridge(args.server, home, env, mqtt, workers=args.workers, threads=args.threads)
    try:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + 20
        while normal_posts(host, int(port), key, 0.001)[0][0] != 200:
            assert time.monotonic() < deadline, "the bridge never answered"
            time.sleep(0.1)
        print(json.dumps({"round": 1, **asyncio.run(attack(served.url, key, args))}), flush=True)
    finally:
        for proc in (served.process, broker):
            proc.send_signal(signal.SIGINT)
        for proc in (served.process, broker):
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
