"""Registry growth: CONNECT, refusal and publish cost with 10 or 10,000 keys, 10 or 1,000 networks.

    python bench/growth.py            # 3 interleaved rounds
    python bench/growth.py --smoke    # one short round

Radio's embedded broker (``radio broker``) runs on a registry of each size in turn. Measured each
time: accepted CONNECTs per second (a real key, 20 at a time), refused CONNECTs per second (a real
key name, a wrong secret), and QoS 1 messages per second from one publisher to one subscriber.
The auth and rights checks are dictionary lookups and one SHA-256, so all three should stay flat
(within noise) as the registry grows: the ratios to the 10-key, 10-network registry say so or not.
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
from pathlib import Path

import tomli_w
from mqtt_load import connect_packet, handshake, now, open_connection, subscribe

from radio import wire
from radio.credentials import secret_digest
from radio.keys import Key, mosquitto_hash, new_secret

RADIO = [sys.executable, "-m", "radio"]
"""The radio command of this interpreter: works without an activated virtualenv."""

LISTEN_ANY = ("--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0")
SIZES = {"10 keys, 10 networks": (10, 10), "10,000 keys": (10_000, 10), "1,000 networks": (10, 1_000)}


def make_registry(folder: Path, keys: int, networks: int) -> str:
    """A configuration and a keys file of the given size; returns the secret of key "k0"."""
    names = [f"n{i}" for i in range(networks)]
    (folder / "radio.toml").write_text(
        "[broker]\npersistence = false\n" + "".join(f"[networks.{n}]\npublic = false\n" for n in names)
    )
    table = {}
    first = ""
    salt = b"benchmark-salt"  # one salt: 10,000 PBKDF2 hashes are the slow part of making the file
    for i in range(keys):
        secret = new_secret()
        first = first or secret
        key = Key(
            name=f"k{i}",
            digest=secret_digest(secret),
            mosquitto=mosquitto_hash(secret, salt),
            publish=frozenset({names[i % networks]}),
            subscribe=frozenset({names[i % networks]}),
        )
        table[key.name] = key.to_toml()
    (folder / "keys.toml").write_text(tomli_w.dumps({"keys": table}))
    return first


async def measure(port: int, secret: str, count: int) -> dict[str, float]:
    """The three rates against a running broker, key "k0" (network n0)."""
    limit = asyncio.Semaphore(20)

    async def one(n: int, password: str) -> None:
        async with limit:
            connection = await open_connection("tcp", port)
            try:
                await connection.send(connect_packet(f"c{n}", "k0", password))
                await asyncio.wait_for(connection.packets.get(), 30)
            finally:
                await connection.close()

    started = now()
    await asyncio.gather(*(one(n, secret) for n in range(count)))
    accepted = count / (now() - started)
    started = now()
    await asyncio.gather(*(one(n, "wrong-" + secret) for n in range(count)))
    refused = count / (now() - started)

    received = 0
    done = asyncio.Event()
    messages = count * 4

    def on_publish(_first: int, _body: bytes) -> None:
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    listener = await open_connection("tcp", port, on_publish)
    await handshake(listener, "listener", "k0", secret)
    await subscribe(listener, "networks/n0", 0)
    publisher = await open_connection("tcp", port)
    await handshake(publisher, "publisher", "k0", secret)
    started = now()
    window = asyncio.Semaphore(64)

    async def acks() -> None:
        while True:
            await publisher.packets.get()
            window.release()

    acker = asyncio.ensure_future(acks())
    for n in range(messages):
        await window.acquire()
        await publisher.send(wire.publish("networks/n0", b'{"n": %d}' % n, 1, n % 65535 + 1))
    await asyncio.wait_for(done.wait(), 60)
    published = messages / (now() - started)
    acker.cancel()
    await listener.close()
    await publisher.close()
    return {
        "connects_per_s": round(accepted),
        "refusals_per_s": round(refused),
        "publishes_per_s": round(published),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    rounds, count = (1, 50) if args.smoke else (args.rounds, 1000)
    rows: dict[str, list[dict[str, float]]] = {size: [] for size in SIZES}
    with tempfile.TemporaryDirectory() as top:
        folders = {}
        for size, (keys, networks) in SIZES.items():
            folder = Path(top) / re.sub(r"\W+", "-", size)
            folder.mkdir()
            folders[size] = (
                folder,
                make_registry(folder, keys if not args.smoke else min(keys, 500), networks),
            )
        for round_ in range(rounds):
            for size in list(SIZES)[:: 1 if round_ % 2 == 0 else -1]:
                folder, secret = folders[size]
                process = subprocess.Popen(
                    [*RADIO, "broker", "--config", str(folder / "radio.toml"), *LISTEN_ANY],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                try:
                    assert process.stdout is not None
                    found = (re.search(r"mqtt://[^:]+:(\d+)", line) for line in process.stdout)
                    port = next(int(m[1]) for m in found if m)
                    row = asyncio.run(measure(port, secret, count))
                finally:
                    process.terminate()
                    process.wait(30)
                rows[size].append(row)
                print(json.dumps({"round": round_ + 1, "registry": size, **row}), flush=True)
    baseline = rows["10 keys, 10 networks"]
    base = {k: statistics.median(r[k] for r in baseline) for k in baseline[0]}
    print("\n| registry | CONNECT/s | refused CONNECT/s | QoS 1 publish/s | ratios to 10 keys, 10 networks |")
    print("|---|---|---|---|---|")
    for size, results in rows.items():
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        ratios = " / ".join(f"{med[k] / base[k]:.2f}" for k in med)
        print(
            f"| {size} | {med['connects_per_s']:,.0f} | {med['refusals_per_s']:,.0f} "
            f"| {med['publishes_per_s']:,.0f} | {ratios} |"
        )


if __name__ == "__main__":
    main()
