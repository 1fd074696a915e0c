"""A 3-node NATS cluster: how long to start, to bring a revocation to every node, and to fail over.

    python bench/nats_cluster.py               # 3 rounds
    python bench/nats_cluster.py --rounds 1

Each round starts a fresh cluster on free ports (``NatsCluster``, as ``radio broker --engine nats``
does) with 3 keys, and measures:

- start: from launching the nodes to every node healthy and serving an MQTT CONNECT;
- revoke: from ``radio keys revoke`` returning to the key's connections (one on each node)
  all closed;
- failover: a listener on node 2 and a retained sample; node 1 is killed (SIGKILL); a publisher
  connects to node 3, retrying as Radio's clients do, and publishes at QoS 1: the time until the
  listener has the sample, and until a late joiner on node 2 gets the retained sample.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from radio.broker.nats import NatsCluster
from radio.registry import LiveRegistry

CONFIG = '[broker]\nmqtt = "127.0.0.1:0"\nwebsocket = "127.0.0.1:0"\n[networks.A]\npublic = false\n'


def client(port: int, user: str, secret: str, timeout: float = 10) -> tuple[mqtt.Client, threading.Event]:
    """Connected, or raises; the event is set when the connection is lost."""
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, clean_session=True)
    paho.username_pw_set(user, secret)
    connected, lost, codes = threading.Event(), threading.Event(), []
    paho.on_connect = lambda *a: (codes.append(a[3].value), connected.set())
    paho.on_disconnect = lambda *_: (lost.set(), connected.set())
    paho.connect("127.0.0.1", port)
    paho.loop_start()
    if not connected.wait(timeout) or codes != [0]:
        paho.loop_stop()
        msg = f"CONNECT refused or unanswered: {codes}"
        raise ConnectionError(msg)
    return paho, lost


def key(folder: Path, *args: str) -> str:
    command = ["radio", *args, "--config", str(folder / "radio.toml")]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def round_(folder: Path) -> dict[str, float]:
    (folder / "radio.toml").write_text(CONFIG)
    secrets = {
        "gen": key(folder, "keys", "add", "gen", "--publish", "A"),
        "reader": key(folder, "keys", "add", "reader", "--subscribe", "A"),
        "victim": key(folder, "keys", "add", "victim", "--subscribe", "A"),
    }
    cluster = NatsCluster(LiveRegistry(folder / "radio.toml"), folder / "nats", nodes=3)
    started = time.perf_counter()
    cluster.start()
    result = {"start": time.perf_counter() - started}
    try:
        ports = [n.mqtt.port for n in cluster.nodes]
        victims = [client(port, "victim", secrets["victim"]) for port in ports]
        key(folder, "keys", "revoke", "victim")
        revoked = time.perf_counter()
        for _, lost in victims:
            assert lost.wait(10), "a revoked key's connection stayed open"
        result["revoke"] = time.perf_counter() - revoked

        gen, _ = client(ports[0], "gen", secrets["gen"])
        gen.publish("networks/A", b"retained", qos=1, retain=True).wait_for_publish(10)
        listener, _ = client(ports[1], "reader", secrets["reader"])
        got = threading.Event()
        listener.on_message = lambda _c, _u, m: got.set() if m.payload == b"after" else None
        listener.subscribe("networks/A/live", qos=1)
        time.sleep(0.5)  # the SUBACK: paho's blocking wait is not worth the code in a benchmark
        cluster.processes[1].kill()
        killed = time.perf_counter()
        while True:
            try:
                publisher, _ = client(ports[2], "gen", secrets["gen"])
                break
            except ConnectionError:
                continue
        publisher.publish("networks/A/live", b"after", qos=1)
        assert got.wait(30), "the listener on node 2 never got the sample"
        result["failover live"] = time.perf_counter() - killed
        retained = threading.Event()
        while not retained.is_set():
            try:
                late, _ = client(ports[1], "reader", secrets["reader"])
            except ConnectionError:
                continue
            late.on_message = lambda _c, _u, m: retained.set() if m.payload == b"retained" else None
            late.subscribe("networks/A", qos=1)
            retained.wait(2)
            late.disconnect()
            late.loop_stop()
        result["failover retained"] = time.perf_counter() - killed
        for paho in (gen, listener, publisher):
            paho.disconnect()
            paho.loop_stop()
    finally:
        cluster.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for n in range(args.rounds):
        with tempfile.TemporaryDirectory() as folder:
            rounds.append(round_(Path(folder)))
        print(f"round {n + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in rounds[-1].items()), flush=True)
    print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rounds):.2f}s" for k in rounds[0]))
    sys.exit(0)


if __name__ == "__main__":
    main()
