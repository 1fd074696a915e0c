"""Broker fan-out: one publisher, N subscribers on one network; Radio's broker against stock amqtt.

    python bench/fanout.py                       # 3 interleaved rounds, N = 1, 10, 100, QoS 0 and 1, TCP
    python bench/fanout.py --subscribers 1000 --transport ws
    python bench/fanout.py --smoke               # a few hundred messages: checks the script still works
    python bench/fanout.py --tls --brokers radio,mosquitto   # each transport beside its TLS twin

Radio's broker runs as ``radio broker`` (auth, rights, every fix, persistence on); the yardstick is
``bench/stock_broker.py`` (amqtt 0.12.1, anonymous auth only); ``--brokers radio,stock,mosquitto``
adds Mosquitto 2.0 with Radio's exported configuration (``radio broker --engine mosquitto``).
Each runs in its own process, is started fresh for each measurement, and the brokers alternate
measurement by measurement. Payloads are
~200-byte JSON samples. QoS 0 is published as fast as the socket takes it; QoS 1 with 64 PUBLISHes
in flight. Reported per measurement: deliveries/s, broker CPU microseconds per delivery, the load
client's own CPU, and loss (deliveries that never came, waiting 5 s past the last one).

The publisher and every subscriber run in this one Python process, on the cores the broker uses,
and the load comes in bursts: the rates are bounded by this client, which reads one broker's
deliveries more cheaply than another's, so they do not compare brokers. ``bench/broker_cpu.py``
compares the embedded broker with Mosquitto (each broker on its own core, C clients, paced load).

``--tls`` measures each transport beside its TLS twin (tcp and mqtts, ws and wss) on brokers
serving both, with a certificate ``radio certs dev`` makes in the temporary folder; stock amqtt
serves no TLS here and is left out of TLS measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from mqtt_load import Connection, handshake, now, open_connection, subscribe

from radio import wire

RADIO = [sys.executable, "-m", "radio"]
"""The radio command of this interpreter: works without an activated virtualenv."""

HERE = Path(__file__).resolve().parent
IDLE = 5.0
ENGINE_OF = {"radio": "embedded", "mosquitto": "mosquitto"}
WINDOW = 64


@dataclass
class Result:
    """One measurement: a broker, a transport, a QoS, N subscribers."""

    broker: str
    transport: str
    qos: int
    subscribers: int
    messages: int
    deliveries_per_s: float
    broker_us_per_delivery: float
    client_us_per_delivery: float
    lost: int


def sample(n: int) -> bytes:
    body = {"network": "bench", "seq": n, "street": "Main St & 3rd Ave", "density": 0.4213, "queue": 7}
    text = json.dumps(body)
    return (text[:-1] + ', "pad": "' + "x" * (196 - len(text) - 10) + '"}').encode()


class Platform:
    """A broker process and the credentials its publisher uses."""

    def __init__(self, kind: str, folder: Path, extra_broker_settings: str = "", tls: bool = False) -> None:
        self.kind = kind
        if kind == "stock":
            args = [sys.executable, str(HERE / "stock_broker.py")]
            self.key: tuple[str | None, str | None] = (None, None)
        else:
            config = folder / "radio.toml"
            broker = f"[broker]\n{extra_broker_settings}"
            certs = ""
            if tls:
                broker += 'mqtts = "127.0.0.1:0"\nwss = "127.0.0.1:0"\n'
                certs = f'[tls]\ncert = "{folder / "server.pem"}"\nkey = "{folder / "server.key"}"\n'
            config.write_text(f"{certs}{broker}[networks.bench]\npublic = true\nretain = false\n")
            if not (folder / "publisher.secret").exists():
                secret = subprocess.run(
                    [*RADIO, "keys", "add", "publisher", "--publish", "bench", "--config", str(config)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                (folder / "publisher.secret").write_text(secret)
            self.key = ("publisher", (folder / "publisher.secret").read_text())
            args = [*RADIO, "broker", "--config", str(config), "--engine", ENGINE_OF[kind]]
            args += ["--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        text = ""
        for line in self.process.stdout:
            text += line
            if "ws://" in text and "mqtt://" in text and ("Ctrl-C" in line or kind == "stock"):
                break
        self.ports = {
            transport: int(found[1])
            for transport, scheme in (("tcp", "mqtt"), ("ws", "ws"), ("mqtts", "mqtts"), ("wss", "wss"))
            if (found := re.search(rf"\b{scheme}://[^:]+:(\d+)", text))
        }
        found = re.search(r"delivery path:\s+(\w+)", text)
        self.delivery_path = found[1] if found else None
        """The embedded broker's build, as its banner names it: ``compiled`` or ``Python``."""
        self.ps = psutil.Process(self.process.pid)
        if kind == "mosquitto":  # the broker is radio's child process
            self.ps = next(p for p in self.ps.children() if p.name() == "mosquitto")

    def cpu(self) -> float:
        """CPU seconds the broker process has used so far."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        """Stop the broker as an operator would (SIGTERM)."""
        self.process.terminate()
        self.process.wait(30)


class Subscribers:
    """N subscriber connections in this process: count every PUBLISH, acknowledge QoS 1 in batches."""

    def __init__(self) -> None:
        self.received = 0
        self.last = now()
        self.connections: list[Connection] = []
        self._acks: list[bytearray] = []
        self.arrived = asyncio.Event()

    def _counter(self, index: int) -> Callable[[int, bytes], None]:
        acks = self._acks[index]

        def on_publish(first: int, body: bytes) -> None:
            self.received += 1
            self.last = now()
            self.arrived.set()
            if (first >> 1) & 3:
                size = int.from_bytes(body[:2])
                acks.extend(b"\x40\x02" + body[2 + size : 4 + size])

        return on_publish

    async def open(self, transport: str, port: int, count: int, qos: int) -> None:
        """Connect and subscribe ``count`` clients, 100 at a time."""
        for start in range(0, count, 100):
            batch = range(start, min(start + 100, count))
            self._acks.extend(bytearray() for _ in batch)
            opened = await asyncio.gather(
                *(open_connection(transport, port, self._counter(i)) for i in batch)
            )
            await asyncio.gather(*(handshake(c, f"sub-{i}") for c, i in zip(opened, batch, strict=True)))
            await asyncio.gather(*(subscribe(c, "networks/bench", qos) for c in opened))
            self.connections.extend(opened)

    async def acknowledge(self) -> None:
        """Send the PUBACKs gathered since the last round, one write per connection."""
        while True:
            await asyncio.sleep(0.005)
            for connection, pending in zip(self.connections, self._acks, strict=True):
                if pending:
                    data = bytes(pending)
                    pending.clear()
                    await connection.send(data)

    async def wait_for(self, expected: int) -> None:
        """Until every delivery arrived, or none arrived for IDLE seconds."""
        while self.received < expected:
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), IDLE)
            except TimeoutError:
                return


async def publish_all(publisher: Connection, payloads: list[bytes], qos: int) -> None:
    """QoS 0 as fast as the socket takes it; QoS 1 with WINDOW PUBLISHes awaiting their PUBACK."""
    if qos == 0:
        for n, payload in enumerate(payloads):
            await publisher.send(wire.publish("networks/bench", payload, 0, 0))
            if n % 50 == 0:
                await asyncio.sleep(0)
        return
    in_flight = asyncio.Semaphore(WINDOW)

    async def drain_pubacks() -> None:
        while True:
            await publisher.packets.get()
            in_flight.release()

    drainer = asyncio.ensure_future(drain_pubacks())
    for n, payload in enumerate(payloads):
        await in_flight.acquire()
        await publisher.send(wire.publish("networks/bench", payload, 1, n % 65535 + 1))
    for _ in range(WINDOW):
        await in_flight.acquire()
    drainer.cancel()


async def measure(platform: Platform, transport: str, qos: int, subscribers: int, messages: int) -> Result:
    """One measurement on a fresh broker."""
    port = platform.ports[transport]
    listeners = Subscribers()
    await listeners.open(transport, port, subscribers, qos)
    acker = asyncio.ensure_future(listeners.acknowledge())
    publisher = await open_connection(transport, port)
    await handshake(publisher, "publisher", *platform.key)
    payloads = [sample(n) for n in range(messages)]
    broker_cpu, client_cpu = platform.cpu(), time.process_time()
    started = listeners.last = now()
    await publish_all(publisher, payloads, qos)
    expected = messages * subscribers
    await listeners.wait_for(expected)
    elapsed = listeners.last - started
    broker_cpu, client_cpu = platform.cpu() - broker_cpu, time.process_time() - client_cpu
    acker.cancel()
    for connection in [*listeners.connections, publisher]:
        await connection.close()
    received = listeners.received
    return Result(
        platform.kind,
        transport,
        qos,
        subscribers,
        messages,
        round(received / elapsed) if elapsed > 0 else 0.0,
        round(broker_cpu / max(received, 1) * 1e6, 1),
        round(client_cpu / max(received, 1) * 1e6, 1),
        expected - received,
    )


def args_scale() -> int:
    """RADIO_BENCH_SCALE=k multiplies every measurement's messages by k, for steadier figures."""
    return int(os.environ.get("RADIO_BENCH_SCALE", "1"))


def transports_of(text: str, *, tls: bool) -> list[str]:
    """The transports asked for; with ``tls``, each followed by its TLS twin."""
    twins = {"tcp": "mqtts", "ws": "wss"}
    asked = text.split(",")
    return list(dict.fromkeys(t for name in asked for t in (name, twins.get(name, name) if tls else name)))


def messages_for(subscribers: int, smoke: bool) -> int:
    if smoke:
        return max(20, 200 // subscribers)
    return max(30, 30_000 // subscribers) * args_scale()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscribers", default="1,10,100")
    parser.add_argument("--qos", default="0,1")
    parser.add_argument("--transport", default="tcp")
    parser.add_argument("--brokers", default="radio,stock")
    parser.add_argument("--smoke", action="store_true", help="one short round: the script still works")
    parser.add_argument(
        "--tls", action="store_true", help="measure each transport beside its TLS twin (mqtts, wss)"
    )
    args = parser.parse_args()
    transports = transports_of(args.transport, tls=args.tls)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rounds = 1 if args.smoke else args.rounds
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        tls = any(t in {"mqtts", "wss"} for t in transports)
        if tls:
            subprocess.run([*RADIO, "certs", "dev", "--dir", folder], check=True, capture_output=True)
            os.environ["TLS_CA"] = str(Path(folder) / "ca.pem")
        for round_ in range(rounds):
            for transport in transports:
                for qos in (int(q) for q in args.qos.split(",")):
                    for subscribers in (int(n) for n in args.subscribers.split(",")):
                        for kind in args.brokers.split(",")[:: 1 if round_ % 2 == 0 else -1]:
                            if kind == "stock" and transport in {"mqtts", "wss"}:
                                continue
                            platform = Platform(kind, Path(folder), tls=tls)
                            try:
                                count = messages_for(subscribers, args.smoke)
                                result = asyncio.run(measure(platform, transport, qos, subscribers, count))
                            finally:
                                platform.stop()
                            results.append(result)
                            print(json.dumps({"round": round_ + 1, **asdict(result)}), flush=True)
    summarize(results)
    if args.tls:
        summarize_tls(results)
    if args.smoke and any(r.deliveries_per_s <= 0 for r in results):
        sys.exit("a measurement delivered nothing")


def summarize(results: list[Result]) -> None:
    groups: dict[tuple[str, int, int], dict[str, list[Result]]] = {}
    for r in results:
        groups.setdefault((r.transport, r.qos, r.subscribers), {}).setdefault(r.broker, []).append(r)
    print(
        "\n| transport | QoS | N | broker | deliveries/s (median, range) | broker us/delivery | lost "
        "| ratio to stock |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (transport, qos, n), by_broker in groups.items():
        medians = {b: statistics.median(r.deliveries_per_s for r in rs) for b, rs in by_broker.items()}
        for broker, rs in by_broker.items():
            rates = [r.deliveries_per_s for r in rs]
            cpu = statistics.median(r.broker_us_per_delivery for r in rs)
            ratio = ""
            if broker != "stock" and medians.get("stock"):
                ratio = f"{medians[broker] / medians['stock']:.2f}"
            spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
            print(
                f"| {transport} | {qos} | {n} | {broker} | {medians[broker]:,.0f} ({spread}) "
                f"| {cpu:.0f} | {sum(r.lost for r in rs)} | {ratio} |"
            )


def summarize_tls(results: list[Result]) -> None:
    """Each TLS transport's median over its plain twin's, same broker, QoS and N, in this run."""
    groups: dict[tuple[str, str, int, int], list[float]] = {}
    for r in results:
        groups.setdefault((r.broker, r.transport, r.qos, r.subscribers), []).append(r.deliveries_per_s)
    medians = {key: statistics.median(rates) for key, rates in groups.items()}
    cpu = {
        key: statistics.median(
            r.broker_us_per_delivery for r in results if (r.broker, r.transport, r.qos, r.subscribers) == key
        )
        for key in groups
    }
    print(
        "\n| broker | transport | QoS | N | plain deliveries/s | TLS deliveries/s | TLS/plain "
        "| broker us/delivery plain, TLS |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (broker, transport, qos, n), rate in medians.items():
        plain = {"mqtts": "tcp", "wss": "ws"}.get(transport)
        base = medians.get((broker, plain or "", qos, n))
        if plain is None or not base:
            continue
        print(
            f"| {broker} | {plain} / {transport} | {qos} | {n} | {base:,.0f} | {rate:,.0f} "
            f"| {rate / base:.2f} | {cpu[broker, plain, qos, n]:.0f}, {cpu[broker, transport, qos, n]:.0f} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
