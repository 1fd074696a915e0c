"""The embedded broker's own cost per delivery: its Python, without the system calls, in one process.

    python bench/fanout_cost.py                          # QoS 0 and 1, 100 subscribers, 5 runs
    python bench/fanout_cost.py --trees .,/path/to/other/checkout --runs 5
    python bench/fanout_cost.py --smoke

``broker_cpu.py`` measures what a broker costs per delivery, system calls included, against
Mosquitto; on a shared machine its figures move with the load. This one isolates what the
broker's own code adds per delivery, which is what a change to the fan-out moves: a real
``EmbeddedBroker`` (registry, auth and topic plugins, admission gate, router) is driven through
``Connection.data_received`` exactly as its transports drive it, but each connection's transport
keeps what it is given instead of writing it to a socket. One publisher sends ``--samples``
samples to ``--subscribers`` subscribers of one public network, one sample per turn of the event
loop (as at a paced rate); at QoS 1 every subscriber's PUBACK is fed back after each turn, one
read each, as a subscriber sends it. The figure is the process's CPU time over the deliveries
(including the feeding of PUBACKs: the same in every tree, and a small part of it).
``--trees`` runs the same load on other checkouts (each first on ``PYTHONPATH``), alternated
run by run, so that two versions are compared on one machine at one time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOPIC = "networks/bench"
PAYLOAD = b'{"t":1.0,"seq":1,"pad":"' + b"x" * 150 + b'"}'


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    length, n = bytearray(), len(body)
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes((first,)) + bytes(length) + body


class Socket:
    """What a socket's transport is to the broker, in C as uvloop's is: ``write`` keeps the bytes.

    Until its first write (the CONNACK) it tells ``answered``; then its ``write`` is the list's own
    ``append``, so later writes cost what a C transport's call does.
    """

    def __init__(self, sent: list[bytes], answered: asyncio.Event) -> None:
        self._sent = sent
        self._answered = answered
        self.write = self._first
        self.get_write_buffer_size = int  # int() is 0: nothing waits, every write is taken at once

    def _first(self, data: bytes) -> None:
        self._sent.append(data)
        self.write = self._sent.append
        self._answered.set()


class Kept:
    """A TCP link (the broker's ``Link``, as ``listeners.TcpLink``) over a transport that keeps.

    The broker writes through the link or to its transport directly, as it does over TCP.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.answered = asyncio.Event()
        """Set at the first write (the CONNACK), whichever way it went."""
        self.transport = Socket(self.sent, self.answered)

    def write(self, data: bytes) -> None:
        """Hand the bytes to the transport."""
        self.transport.write(data)

    def buffered(self) -> int:
        """What the transport holds."""
        return self.transport.get_write_buffer_size()

    def pause_reading(self) -> None:
        """Nothing to pause: the bytes are handed over by this script."""

    def resume_reading(self) -> None:
        """Likewise."""

    def drained(self) -> Any:
        """Drained at once."""
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def close(self) -> None:
        """Nothing to close."""


async def _answered(link: Kept, connection: Any) -> None:
    """Until the broker wrote to the link (its CONNACK, once the CONNECT is authenticated).

    A connection that took its transport's ``write`` when it opened (``Connection.send``) is then
    given the list's own ``append``, the C call it would have had from the start.
    """
    await link.answered.wait()
    if hasattr(connection, "send"):
        connection.send = link.sent.append


def _ack(k: int) -> bytes:
    """The PUBACK of every subscriber's ``k``-th sample, built once for all of them.

    Each session numbers its deliveries 1, 2, 3... (``Session.allocate_pid``), and every
    subscriber gets every sample, so the ``k``-th has the same id everywhere. Were it not so, a
    PUBACK would name no delivery, the window of unacknowledged samples would fill and samples
    would wait in the queues: the run checks that every delivery was made.
    """
    return b"\x40\x02" + (k % 65_535 + 1).to_bytes(2, "big")


async def _run(config: Path, secret: str, qos: int, subscribers: int, samples: int) -> dict[str, Any]:
    from radio.broker.server import EmbeddedBroker  # noqa: PLC0415 - from the tree on PYTHONPATH
    from radio.config import Address  # noqa: PLC0415
    from radio.registry import LiveRegistry  # noqa: PLC0415

    embedded = EmbeddedBroker(
        LiveRegistry(config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    )
    await embedded.start()
    broker: Any = embedded._radio  # the connections are opened as its listeners do
    try:
        clients = []
        for i in range(subscribers):
            link = Kept()
            connection = broker._open(link, "tcp", ("127.0.0.1", 10_000 + i))
            connection.data_received(_packet(0x10, _string("MQTT") + bytes((4, 2, 0, 60)) + _string(f"s{i}")))
            await _answered(link, connection)  # its CONNACK: the session is taken
            connection.data_received(_packet(0x82, b"\x00\x01" + _string(TOPIC) + bytes((qos,))))
            clients.append((connection, link))
        link = Kept()
        publisher = broker._open(link, "tcp", ("127.0.0.1", 9_999))
        credentials = _string("publisher") + _string(secret)
        publisher.data_received(
            _packet(0x10, _string("MQTT") + bytes((4, 0xC2, 0, 60)) + _string("publisher") + credentials)
        )
        await _answered(link, publisher)
        assert link.sent[0] == b"\x20\x02\x00\x00", f"the publisher was refused: {link.sent[0]!r}"
        pid = (lambda k: (k % 60_000 + 1).to_bytes(2, "big")) if qos else (lambda _k: b"")
        packets = [_packet(0x30 | qos << 1, _string(TOPIC) + pid(k) + PAYLOAD) for k in range(samples)]
        await asyncio.sleep(0)
        for _, kept in clients:
            kept.sent.clear()
        deliveries = broker.router.stats.deliveries
        gc.collect()
        started = time.process_time()
        for k, data in enumerate(packets):
            publisher.data_received(data)
            await asyncio.sleep(0)  # the turn ends: every connection is flushed
            ack = _ack(k) if qos else b""
            for connection, kept in clients:
                if ack:
                    connection.data_received(ack)
                kept.sent.clear()
        spent = time.process_time() - started
        delivered = broker.router.stats.deliveries - deliveries
        expected = samples * subscribers
        assert delivered == expected, f"{delivered} deliveries of {expected}: a PUBACK named no delivery"
    finally:
        await embedded.stop()
    return {"qos": qos, "deliveries": delivered, "us_per_delivery": round(spent / max(delivered, 1) * 1e6, 3)}


def child(args: argparse.Namespace) -> None:
    """One run in this process, on the tree first on PYTHONPATH; prints a JSON line."""
    from radio.broker.run import new_event_loop  # noqa: PLC0415

    secret = sys.stdin.read().strip()
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        row = runner.run(_run(Path(args.config), secret, args.qos, args.subscribers, args.samples))
    print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trees", default=".", help="checkouts to compare, comma-separated (.: this one)")
    parser.add_argument("--qos", default="0,1")
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="10 subscribers, 50 samples, one run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.qos = int(args.qos)
        child(args)
        return
    if args.smoke:
        args.subscribers, args.samples, args.runs = 10, 50, 1
    here = Path(__file__).resolve().parent.parent
    trees = [str(here) if t == "." else str(Path(t).resolve()) for t in args.trees.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "radio.toml"
        config.write_text("[broker]\npersistence = false\n[networks.bench]\npublic = true\nretain = false\n")
        secret = subprocess.run(
            [
                sys.executable,
                "-m",
                "radio",
                "keys",
                "add",
                "publisher",
                "--publish",
                "bench",
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for run in range(args.runs):
            for qos in (int(q) for q in args.qos.split(",")):
                for tree in trees if run % 2 == 0 else trees[::-1]:
                    command = [
                        sys.executable,
                        __file__,
                        "--child",
                        "--config",
                        str(config),
                        "--qos",
                        str(qos),
                    ]
                    command += ["--subscribers", str(args.subscribers), "--samples", str(args.samples)]
                    done = _child(command, tree, secret)
                    row = {"round": run + 1, "tree": tree, "subscribers": args.subscribers}
                    row.update(json.loads(done))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| tree | QoS | us per delivery, median (range) | runs |")
    print("|---|---|---|---|")
    for tree in trees:
        for qos in sorted({r["qos"] for r in rows}):
            values = [r["us_per_delivery"] for r in rows if r["tree"] == tree and r["qos"] == qos]
            spread = f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
            print(f"| {tree} | {qos} | {spread} | {len(values)} |")


def _child(command: list[str], tree: str, secret: str) -> str:
    """Run one measurement on ``tree``; the key's secret goes by stdin, never on a command line."""
    done = subprocess.run(
        command,
        input=secret,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": tree},
    )
    return done.stdout.strip().splitlines()[-1]


if __name__ == "__main__":
    main()
