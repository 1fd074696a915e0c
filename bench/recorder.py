"""How fast the recorder numbers samples, against how fast a plain listener receives the same burst.

    python bench/recorder.py                          # 3 rounds of 5,000 samples, embedded broker
    python bench/recorder.py --engine mosquitto       # the same on Mosquitto
    python bench/recorder.py --smoke                  # 1 round of 200 samples

``radio broker`` and ``radio recorder`` run as processes of their own, as under ``radio up``. Each
round publishes a burst of samples at QoS 1 to one network (up to 100 in flight), and measures
from the first publish to (a) the last sample reaching a QoS 1 listener in this process and (b)
the recorder having numbered the last one (its ``history.db`` polled read-only every 5 ms). The
ratio recorder/listener says what numbering and writing each sample costs on top of delivery. Each
round also checks that the recorder lost nothing: every sample of the burst is in the history (a
sample its session dropped would leave a hole in the numbering, not a missing last number).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

RADIO = [sys.executable, "-m", "radio"]
CONFIG = (
    "[networks.bench]\npublic = true\nretain = false\nhistory = 1000000\n\n[broker]\npersistence = false\n"
)


def started(args: list[str], pattern: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if pattern in line:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
            return process, line
    sys.exit(f"{args[3]} did not start")


def numbered(db: Path, after: int) -> int:
    """How many samples the history holds past ``after``: fewer than were published is a loss."""
    with sqlite3.connect(db.as_uri() + "?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM samples WHERE network = 'bench' AND seq > ?", (after,)
        ).fetchone()
    return int(row[0])


def last_seq(db: Path) -> int:
    try:
        with sqlite3.connect(db.as_uri() + "?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT last_seq FROM sequences WHERE network = 'bench'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def client(port: int, name: str, secret: str | None = None) -> mqtt.Client:
    paho = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    if secret is not None:
        paho.username_pw_set("bench", secret)
    paho.max_inflight_messages_set(100)
    paho.connect("127.0.0.1", port)
    paho.loop_start()
    return paho


def one_round(port: int, db: Path, count: int, start: int, secret: str) -> dict[str, float]:
    received = threading.Event()
    seen = [0]

    def on_message(_c: object, _u: object, _m: mqtt.MQTTMessage) -> None:
        seen[0] += 1
        if seen[0] == count:
            received.set()

    listener = client(port, f"bench-listener-{start}", secret)  # keyed: an anonymous queue holds only 100
    subscribed = threading.Event()
    listener.on_message = on_message
    listener.on_subscribe = lambda *_: subscribed.set()
    listener.subscribe("networks/bench", qos=1)
    assert subscribed.wait(60), "the listener was not subscribed"
    publisher = client(port, f"bench-publisher-{start}", secret)
    began = time.perf_counter()
    infos = [publisher.publish("networks/bench", json.dumps({"i": i}), qos=1) for i in range(count)]
    assert received.wait(300), "the listener did not get every sample"
    delivered = time.perf_counter() - began
    while last_seq(db) < start + count:
        assert time.perf_counter() - began < 300, "the recorder did not number every sample"
        time.sleep(0.005)
    recorded = time.perf_counter() - began
    for info in infos:  # a PUBACK waits for the broker's store: it may come after the deliveries
        info.wait_for_publish(60)
    assert all(info.is_published() for info in infos), "a sample was not acknowledged"
    lost = count - numbered(db, start)  # a sample its session dropped left a hole in the numbering
    for paho in (listener, publisher):
        paho.disconnect()
        paho.loop_stop()
    return {"listener_per_s": count / delivered, "recorder_per_s": count / recorded, "lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("embedded", "mosquitto"), default="embedded")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--smoke", action="store_true", help="1 round of 200 samples")
    parser.add_argument(
        "--recorder-max-queued",
        type=int,
        default=None,
        help="[broker] recorder_max_queued (default: its own)",
    )
    args = parser.parse_args()
    rounds, count = (1, 200) if args.smoke else (args.rounds, args.count)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "radio.toml"
        queue = args.recorder_max_queued
        config.write_text(CONFIG + (f"recorder_max_queued = {queue}\n" if queue is not None else ""))
        common = ["--config", str(config)]
        keys = subprocess.run(
            [*RADIO, "keys", "add", "bench", "--publish", "bench", *common],
            capture_output=True,
            text=True,
            check=True,
        )
        secret = keys.stdout.strip()
        broker, banner = started(
            [
                *RADIO,
                "broker",
                *common,
                "--mqtt",
                "127.0.0.1:0",
                "--ws",
                "127.0.0.1:0",
                "--engine",
                args.engine,
            ],
            "mqtt://",
        )
        port = int(banner.split("mqtt://")[1].split(":")[1].split()[0].rstrip("/"))
        recorder, _ = started(
            [*RADIO, "recorder", *common, "--broker", f"mqtt://127.0.0.1:{port}"], "Recording"
        )
        try:
            results = []
            for n in range(rounds):
                result = one_round(port, Path(folder) / "history.db", count, n * count, secret)
                result["ratio"] = result["recorder_per_s"] / result["listener_per_s"]
                results.append(result)
                print(
                    json.dumps({"round": n + 1, "engine": args.engine, "samples": count, **result}),
                    flush=True,
                )
            ratios = sorted(r["ratio"] for r in results)
            lost = sum(int(r["lost"]) for r in results)
            median = ratios[len(ratios) // 2]
            print(json.dumps({"engine": args.engine, "median_recorder_over_listener": median, "lost": lost}))
            if lost:
                sys.exit(f"the recorder lost {lost} samples: holes in the history")
        finally:
            for process in (recorder, broker):
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
