"""Abuse from one address: what it costs the broker's disk, a keyed publisher and the log.

    python bench/abuse.py                                   # every attack at full size, 1 round
    python bench/abuse.py --attacks sessions --sessions 10000
    python bench/abuse.py --attacks retained --topics 50000 --max-retained 50000
    python bench/abuse.py --smoke

`radio broker` runs with its store on; the attacks come from 127.0.0.1, the keyed publisher and
the legitimate clients from 127.0.0.2. The publisher sends QoS 1 samples of 1 KB one at a time
(50 a second) and the figure is the median time to each PUBACK, measured before the attack and
under it.

- ``sessions``: ``--sessions`` anonymous persistent sessions (clean session off) subscribe to
  ``networks/pubnet/#`` at QoS 1 and leave; then the publisher sends 200 samples to
  ``networks/pubnet/x``. Reported: the time to open them, sessions accepted and refused, the
  store's growth (file, WAL and shared memory), and its size once the sessions have expired
  (``--expiry``, ``anonymous_session_expiry``: 120 s, longer than opening 3,000 sessions takes,
  so that none expires before the samples are published).
- ``retained``: one key retains ``--topics`` topics; then an anonymous client subscribes and
  unsubscribes 20 filters that match nothing, in a loop, while the publisher sends 200 samples.
  ``--max-retained`` sets the network's cap (the default cap stops the key at 1,000 topics).
- ``sockets``: ``--sockets`` sockets that never send a CONNECT, each reopened as soon as the
  broker closes it (``connect_timeout`` 10 s, or at once past ``max_connecting_per_address``),
  while a keyed client connects once a second from the other address (25 tries, 5 s each).
  Then ``--loop`` anonymous CONNECTs in a row.

Every attack reports the lines the broker logged in all, from start to stop.

Settings the broker does not know are never written, so the same command measures an older
broker too (``--max-retained`` excepted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mqtt_load import connect_packet

from radio import wire

RADIO = [sys.executable, "-m", "radio"]
ATTACKER = "127.0.0.1"
OTHER = "127.0.0.2"
PAD = b"x" * 1000
CLIENT_TIMEOUT = 5.0
HOLDERS = 4
"""Processes sharing the silent sockets: one alone opens them too slowly to keep 10,000 open."""


class Client:
    """One raw MQTT connection from a chosen loopback address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.framer = wire.Framer()
        self.waiting: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int, source: str) -> Client:
        """Connect from ``source`` (a loopback address)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def next(self, kind: int) -> bytes:
        """The body of the next packet of a type (others are skipped); EOFError if closed."""
        while True:
            while self.waiting:
                first, body = self.waiting.pop(0)
                if first >> 4 == kind:
                    return body
            data = await self.reader.read(65536)
            if not data:
                raise EOFError
            self.waiting.extend(self.framer.feed(data))

    async def connect(self, packet: bytes) -> int:
        """Send a CONNECT; the CONNACK's return code."""
        self.writer.write(packet)
        return (await self.next(2))[1]

    async def close(self) -> None:
        """Close the socket."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Broker:
    """`radio broker` in a folder of its own, its log kept in a file."""

    def __init__(self, folder: Path, broker: str, networks: str) -> None:
        self.folder = folder
        config = folder / "radio.toml"
        config.write_text(f"[broker]\n{broker}\n{networks}")
        self.secret = subprocess.run(
            [*RADIO, "keys", "add", "keyed", "--publish", "pubnet,bench", "--config", str(config)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        self.log = (folder / "broker.log").open("w")
        args = [*RADIO, "broker", "--config", str(config), "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := re.search(r"mqtt://[^:]+:(\d+)", line):
                self.port = int(match[1])
                return
        msg = "the broker did not start"
        raise RuntimeError(msg)

    def store_size(self) -> int:
        """Bytes of the store: file, write-ahead log and shared memory."""
        return sum(p.stat().st_size for p in self.folder.glob("broker.db*"))

    def log_lines(self) -> int:
        """Lines the broker has logged so far."""
        return len((self.folder / "broker.log").read_text().splitlines())

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM)."""
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


async def puback_p50(broker: Broker, topic: str, count: int) -> float:
    """The keyed publisher, from the other address: median ms from PUBLISH to PUBACK."""
    client = await Client.open(broker.port, OTHER)
    assert await client.connect(connect_packet("keyed-publisher", "keyed", broker.secret)) == 0
    times = []
    try:
        for n in range(count):
            pid = n % 65535 + 1
            sent = time.perf_counter()
            client.writer.write(wire.publish(topic, b'{"n": %d, "pad": "%s"}' % (n, PAD), 1, pid))
            await client.next(4)
            times.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(0.02)
    finally:
        await client.close()
    return round(statistics.median(times), 2)


async def open_sessions(port: int, count: int) -> tuple[int, int]:
    """Anonymous persistent sessions on networks/pubnet/# at QoS 1, 100 at a time: (accepted, refused)."""
    limit = asyncio.Semaphore(100)
    codes: list[int] = []

    async def one(n: int) -> None:
        async with limit:
            client = await Client.open(port, ATTACKER)
            try:
                code = await client.connect(connect_packet(f"flood-{n}", clean=False))
                codes.append(code)
                if code == 0:
                    client.writer.write(wire.subscribe(1, [("networks/pubnet/#", 1)]))
                    await client.next(9)
                    client.writer.write(b"\xe0\x00")
            finally:
                await client.close()

    await asyncio.gather(*(one(n) for n in range(count)))
    return codes.count(0), len(codes) - codes.count(0)


async def shrunk(broker: Broker, size: int, within: float) -> None:
    """Return once the store is no larger than ``size`` (polled: a file's size sends no event)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and broker.store_size() > size:  # noqa: ASYNC110
        await asyncio.sleep(1)


async def sessions_attack(broker: Broker, sessions: int, samples: int, expiry: float) -> dict[str, float]:
    before = await puback_p50(broker, "networks/pubnet/x", samples)
    start_size = broker.store_size()
    started = time.monotonic()
    accepted, refused = await open_sessions(broker.port, sessions)
    opened = time.monotonic() - started
    under = await puback_p50(broker, "networks/pubnet/x", samples)
    grown = broker.store_size() - start_size
    if expiry:  # the sessions expire, then two sweeps (a quarter of the expiry apart): what is left
        await asyncio.sleep(max(0.0, expiry - (time.monotonic() - started)) + expiry / 2)
        await shrunk(broker, start_size, expiry / 4)
    return {
        "sessions": sessions,
        "open_s": round(opened, 1),
        "accepted": accepted,
        "refused": refused,
        "p50_before_ms": before,
        "p50_under_ms": under,
        "store_growth_mb": round(grown / 1e6, 1),
        "store_after_expiry_mb": round(broker.store_size() / 1e6, 1),
    }


async def retain_topics(broker: Broker, topics: int) -> None:
    """The key retains ``topics`` topics, 500 PUBLISHes in flight at a time."""
    client = await Client.open(broker.port, OTHER)
    assert await client.connect(connect_packet("hoarder", "keyed", broker.secret)) == 0
    try:
        for start in range(0, topics, 500):
            batch = range(start, min(start + 500, topics))
            for n in batch:
                packet = wire.publish(f"networks/pubnet/r/{n}", b'{"n": %d}' % n, 1, n % 65535 + 1)
                client.writer.write(bytes([packet[0] | 0x01]) + packet[1:])  # retain
            for _ in batch:
                await client.next(4)
    finally:
        await client.close()


async def resubscribe(port: int, stop: asyncio.Event) -> int:
    """Subscribe and unsubscribe 20 filters that match nothing, until stopped; how many rounds."""
    client = await Client.open(port, ATTACKER)
    assert await client.connect(connect_packet("resubscriber")) == 0
    filters = [f"networks/pubnet/nothing{i}/#" for i in range(20)]
    rounds = 0
    try:
        while not stop.is_set():
            client.writer.write(wire.subscribe(1, [(f, 1) for f in filters]))
            await client.next(9)
            client.writer.write(wire.unsubscribe(2, filters))
            await client.next(11)
            rounds += 1
    finally:
        await client.close()
    return rounds


async def retained_attack(broker: Broker, topics: int, samples: int) -> dict[str, float]:
    await retain_topics(broker, topics)
    before = await puback_p50(broker, "networks/bench", samples)
    stop = asyncio.Event()
    looping = asyncio.create_task(resubscribe(broker.port, stop))
    started = time.perf_counter()
    under = await puback_p50(broker, "networks/bench", samples)
    stop.set()
    rounds = await looping
    return {
        "topics": topics,
        "p50_before_ms": before,
        "p50_under_ms": under,
        "resubscribes_per_s": round(rounds / (time.perf_counter() - started)),
    }


async def hold_sockets(port: int, count: int) -> None:
    """Keep ``count`` silent sockets open for good, reopening each as soon as it is closed.

    Run in a process of its own (``--hold``), so that the legitimate client's timeouts measure
    the broker, not this loop. Says "ready" once each socket was opened at least once.
    """
    first = 0

    async def one() -> None:
        nonlocal first
        opened = False
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
            except OSError:
                await asyncio.sleep(0.1)
                continue
            if not opened:
                opened, first = True, first + 1
                if first == count:
                    print("ready", flush=True)
            with contextlib.suppress(OSError):
                await reader.read(1)  # until the broker closes it
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


async def legitimate(broker: Broker, tries: int) -> int:
    """Keyed CONNECTs from the other address, one a second: how many got CONNACK 0 within 5 s."""
    ok = 0
    for n in range(tries):
        started = time.monotonic()
        try:
            client = await asyncio.wait_for(Client.open(broker.port, OTHER), CLIENT_TIMEOUT)
            try:
                packet = connect_packet(f"legit-{n}", "keyed", broker.secret)
                ok += await asyncio.wait_for(client.connect(packet), CLIENT_TIMEOUT) == 0
            finally:
                await client.close()
        except (OSError, EOFError, TimeoutError):
            pass
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return ok


async def connect_loop(port: int, count: int) -> None:
    """Anonymous CONNECT and DISCONNECT, ``count`` times, 20 at a time."""
    limit = asyncio.Semaphore(20)

    async def one(n: int) -> None:
        async with limit:
            client = await Client.open(port, ATTACKER)
            try:
                await client.connect(connect_packet(f"loop-{n}"))
                client.writer.write(b"\xe0\x00")
            finally:
                await client.close()

    await asyncio.gather(*(one(n) for n in range(count)))


async def sockets_attack(broker: Broker, sockets: int, tries: int, loop: int) -> dict[str, float]:
    share = str(sockets // HOLDERS)
    holders = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--hold", str(broker.port), share, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(HOLDERS)
    ]
    try:
        started = time.monotonic()
        for holder in holders:  # every socket opened once
            assert holder.stdout is not None
            await asyncio.wait_for(holder.stdout.readline(), 300)
        ready = time.monotonic() - started
        ok = await legitimate(broker, tries)
    finally:
        for holder in holders:
            holder.terminate()
            await holder.wait()
    await connect_loop(broker.port, loop)
    return {
        "sockets": sockets,
        "all_opened_s": round(ready, 1),
        "legitimate_ok": ok,
        "legitimate_tries": tries,
        "connects": loop,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attacks", default="sessions,retained,sockets")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--max-retained", type=int, default=None)
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--loop", type=int, default=10_000)
    parser.add_argument("--expiry", type=int, default=120, help="anonymous_session_expiry, seconds")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--hold", nargs=2, type=int, metavar=("PORT", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(hold_sockets(*args.hold))
        return
    samples, tries = 200, 25
    if args.smoke:
        args.sessions, args.topics, args.sockets, args.loop, samples, tries = 50, 200, 50, 50, 20, 3
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker inherits it
    cap = f"max_retained = {args.max_retained}\n" if args.max_retained is not None else ""
    networks = f"[networks.pubnet]\npublic = true\n{cap}[networks.bench]\npublic = false\n"
    for round_ in range(args.rounds):
        for attack in args.attacks.split(","):
            with tempfile.TemporaryDirectory() as folder:
                broker = Broker(Path(folder), f"anonymous_session_expiry = {args.expiry}", networks)
                try:
                    if attack == "sessions":
                        expiry = 0 if args.smoke else args.expiry
                        row = asyncio.run(sessions_attack(broker, args.sessions, samples, expiry))
                    elif attack == "retained":
                        row = asyncio.run(retained_attack(broker, args.topics, samples))
                    else:
                        row = asyncio.run(sockets_attack(broker, args.sockets, tries, args.loop))
                finally:
                    broker.stop()
                row["log_lines"] = broker.log_lines()  # the whole run's, summaries written at the stop
            print(json.dumps({"round": round_ + 1, "attack": attack, **row}), flush=True)


if __name__ == "__main__":
    main()
