"""End to end: from a publish (MQTT, or POST /publish through the bridge) to receipt by 100 listeners.

    python bench/latency.py                      # 100 listeners; 20, 100, 200 samples/s; 10 s each
    python bench/latency.py --smoke              # 10 listeners, 40 samples/s for 0.5 s

For each broker (Radio's embedded broker, and Mosquitto via ``radio broker --engine mosquitto``),
each door (MQTT QoS 1, HTTP through ``radio bridge``) and each rate, samples go out at a fixed rate
and every listener timestamps each arrival. Reported: p50 and p99 of publish-to-receipt over all
deliveries, loss, and whether the run was queueing: the median latency of the last third of the
samples against the first third (a ratio well above 1 means latency grows with the run: the
broker cannot keep up with that rate). Publisher and listeners share this process and its clock.

Latency runs from when a sample was due (``start + seq / rate``), not from when it actually went
out: a publisher held up by a busy loop or a slow answer makes the samples after it late, and
that wait counts. The listeners share this process with the publisher, so their reading costs
count too; ``bench/broker_cpu.py`` measures the broker alone on its core, with C clients.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from mqtt_load import handshake, now, open_connection, open_listeners

from radio import wire

RADIO = [sys.executable, "-m", "radio"]
"""The radio command of this interpreter: works without an activated virtualenv."""

ENGINE_OF = {"radio": "embedded", "mosquitto": "mosquitto"}
LISTEN_ANY = ("--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0")


@dataclass(frozen=True)
class Setting:
    """What one run measures."""

    broker: str
    door: str
    rate: int
    listeners: int


@dataclass
class Result:
    """One run: a broker, a door, a rate."""

    broker: str
    door: str
    rate: int
    listeners: int
    samples: int
    p50_ms: float
    p99_ms: float
    lost: int
    growth: float


class Platform:
    """A broker (embedded or Mosquitto) and a bridge in front of it, in their own processes."""

    def __init__(self, kind: str, folder: Path) -> None:
        config = folder / "radio.toml"
        config.write_text("[broker]\npersistence = false\n[networks.bench]\npublic = true\nretain = false\n")
        secret_file = folder / "publisher.secret"
        if not secret_file.exists():
            command = [*RADIO, "keys", "add", "publisher", "--publish", "bench", "--config", str(config)]
            secret_file.write_text(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
            )
        self.secret = secret_file.read_text()
        self.broker = subprocess.Popen(
            [*RADIO, *("broker", "--config", str(config), "--engine", ENGINE_OF[kind]), *LISTEN_ANY],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.mqtt_port = int(_wait_for(self.broker, r"mqtt://[^:]+:(\d+)"))
        self.url = f"mqtt://127.0.0.1:{self.mqtt_port}"
        self.bridge = subprocess.Popen(
            [*RADIO, *("bridge", "--config", str(config), "--listen", "127.0.0.1:0"), "--broker", self.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.http_port = int(_wait_for(self.bridge, r"POST http://127\.0\.0\.1:(\d+)/publish"))
        _wait_healthy(self.http_port)

    def stop(self) -> None:
        """SIGTERM to both, bridge first."""
        for process in (self.bridge, self.broker):
            process.terminate()
            process.wait(30)


def _wait_for(process: subprocess.Popen[str], pattern: str) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            return match[1]
    msg = f"no {pattern!r} in the output"
    raise RuntimeError(msg)


def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    msg = "the bridge never became healthy"
    raise RuntimeError(msg)


def _post(port: int, secret: str, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/publish", body=body, headers={"API-KEY": secret})
        return connection.getresponse().status
    finally:
        connection.close()


async def run(platform: Platform, setting: Setting, seconds: float) -> Result:
    """Publish ``rate`` samples/s for ``seconds``, collect every arrival."""
    rate, listeners = setting.rate, setting.listeners
    count = int(rate * seconds)
    sent: dict[int, float] = {}
    latencies: dict[int, list[float]] = {}
    arrivals = 0
    all_in = asyncio.Event()

    def on_publish(_first: int, body: bytes) -> None:
        nonlocal arrivals
        arrived = now()
        size = int.from_bytes(body[:2])
        seq = json.loads(body[2 + size :])["seq"]
        latencies.setdefault(seq, []).append(arrived - sent[seq])
        arrivals += 1
        if arrivals == count * listeners:
            all_in.set()

    connections = await open_listeners(platform.mqtt_port, listeners, lambda _: on_publish)
    send = await _sender(platform, setting.door)
    started = now()
    for seq in range(count):
        sent[seq] = due = started + seq / rate
        await asyncio.sleep(max(0.0, due - now()))
        await send(seq)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 10)
    for connection in connections:
        await connection.close()
    return summarize(setting, count, latencies)


async def _sender(platform: Platform, door: str) -> Callable[[int], asyncio.Future[None]]:
    if door == "mqtt":
        publisher = await open_connection("tcp", platform.mqtt_port)
        await handshake(publisher, "publisher", "publisher", platform.secret)

        async def send_mqtt(seq: int) -> None:
            payload = json.dumps({"seq": seq, "pad": "x" * 160}).encode()
            await publisher.send(wire.publish("networks/bench", payload, 1, seq % 65535 + 1))

        return send_mqtt  # type: ignore[return-value]
    pool = ThreadPoolExecutor(max_workers=16)
    loop = asyncio.get_running_loop()

    async def send_http(seq: int) -> None:
        body = json.dumps({"network": "bench", "data": {"seq": seq, "pad": "x" * 150}}).encode()
        answer = loop.run_in_executor(pool, _post, platform.http_port, platform.secret, body)
        answer.add_done_callback(lambda f: f.result() == 200 or print(f"HTTP {f.result()}", file=sys.stderr))

    return send_http  # type: ignore[return-value]


def summarize(setting: Setting, count: int, latencies: dict[int, list[float]]) -> Result:
    """Percentiles over all deliveries; growth = median of the last third over the first third."""
    kind, door, rate, listeners = setting.broker, setting.door, setting.rate, setting.listeners
    every = sorted(x for xs in latencies.values() for x in xs)
    if not every:
        return Result(kind, door, rate, listeners, count, 0.0, 0.0, count * listeners, 0.0)
    third = max(1, count // 3)
    first = [x for seq in range(third) for x in latencies.get(seq, [])]
    last = [x for seq in range(count - third, count) for x in latencies.get(seq, [])]
    growth = statistics.median(last) / statistics.median(first) if first and last else 0.0
    return Result(
        kind,
        door,
        rate,
        listeners,
        count,
        round(every[len(every) // 2] * 1000, 2),
        round(every[int(len(every) * 0.99)] * 1000, 2),
        count * listeners - len(every),
        round(growth, 2),
    )


def table(results: list[Result]) -> None:
    """Medians over the rounds, with the range of p50 and the worst growth."""
    groups: dict[tuple[str, str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.broker, r.door, r.rate), []).append(r)
    print("\n| broker | door | samples/s | p50 (range) | p99 | lost | last/first third (worst) |")
    print("|---|---|---|---|---|---|---|")
    for (broker, door, rate), rs in groups.items():
        p50 = [r.p50_ms for r in rs]
        print(
            f"| {broker} | {door} | {rate} | {statistics.median(p50):.2f} ms ({min(p50):.2f}-{max(p50):.2f}) "
            f"| {statistics.median(r.p99_ms for r in rs):.2f} ms | {sum(r.lost for r in rs)} "
            f"| {statistics.median(r.growth for r in rs):.2f} ({max(r.growth for r in rs):.2f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="20,100,200")
    parser.add_argument("--listeners", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--brokers", default="radio,mosquitto")
    parser.add_argument("--doors", default="mqtt,http")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="10 listeners, 40 samples/s for 0.5 s")
    args = parser.parse_args()
    if args.smoke:
        args.rates, args.listeners, args.seconds, args.rounds = "40", 10, 0.5, 1
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for kind in args.brokers.split(",")[:: 1 if round_ % 2 == 0 else -1]:
                for door in args.doors.split(","):
                    for rate in (int(r) for r in args.rates.split(",")):
                        # A fresh platform per run: an overloaded broker is still draining its
                        # backlog long after the run that overloaded it.
                        platform = Platform(kind, Path(folder))
                        try:
                            setting = Setting(kind, door, rate, args.listeners)
                            result = asyncio.run(run(platform, setting, args.seconds))
                        finally:
                            platform.stop()
                        results.append(result)
                        print(json.dumps({"round": round_ + 1, **asdict(result)}), flush=True)
    table(results)
    if args.smoke and any(r.lost or not r.p50_ms for r in results):
        sys.exit("samples were lost in the smoke run")


if __name__ == "__main__":
    main()
