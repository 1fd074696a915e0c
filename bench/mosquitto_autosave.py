"""What saving on every change costs Mosquitto: its store written after each change, or every 10 s.

    python bench/mosquitto_autosave.py                  # 3 rounds, 2,000 samples each, 64 in flight
    python bench/mosquitto_autosave.py --smoke

Mosquitto keeps its state in memory and writes all of it (``mosquitto.db``) at intervals. The
configuration Radio renders can save after every change (``autosave_on_changes true`` with
``autosave_interval 1``) or every 10 seconds (``autosave_on_changes false``, ``autosave_interval
10``). One publisher sends retained QoS 1 samples (64 awaiting their PUBACK) to a network that 10
offline persistent sessions subscribe to, as in ``durability.py``: every sample changes the
retained value and joins 10 queues, so the store grows as the run goes on, and each save writes
it all. Reported: acknowledged publishes per second and Mosquitto's CPU per publish, per mode.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from durability import measured, print_table

from radio.broker.mosquitto import find_binary

RADIO = [sys.executable, "-m", "radio"]
MODES = {
    "every change": ("true", 1),
    "every 10 s": ("false", 10),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(folder: Path, mode: str) -> tuple[subprocess.Popen[bytes], int, str]:
    config = folder / "radio.toml"
    port = free_port()
    config.write_text(
        f'[broker]\nmqtt = "127.0.0.1:{port}"\nwebsocket = false\n[networks.bench]\npublic = true\n'
    )
    secret_file = folder / "publisher.secret"
    if not secret_file.exists():
        add = [*RADIO, "keys", "add", "publisher", "--publish", "bench", "--config", str(config)]
        made = subprocess.run(add, capture_output=True, text=True, check=True)
        secret_file.write_text(made.stdout.strip())
    files = folder / "mosquitto"
    export = [*RADIO, "mosquitto", "export", "--dir", str(files), "--config", str(config)]
    subprocess.run(export, capture_output=True, check=True)
    (files / "mosquitto.db").unlink(missing_ok=True)
    on_changes, interval = MODES[mode]
    conf = files / "mosquitto.conf"
    text = re.sub(r"(?m)^#?autosave_(on_changes|interval) .*\n", "", conf.read_text())
    text += f"autosave_on_changes {on_changes}\nautosave_interval {interval}\n"
    conf.write_text(text)
    broker = subprocess.Popen([find_binary(), "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return broker, port, secret_file.read_text()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2_000)
    parser.add_argument("--smoke", action="store_true", help="one round of 200 samples")
    args = parser.parse_args()
    rounds, samples = (1, 200) if args.smoke else (args.rounds, args.samples)
    results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
            for mode in order:
                broker, port, secret = start(Path(folder), mode)
                rate, cpu_us = measured(broker, port, secret, samples)
                results[mode].append((rate, cpu_us))
                line = {"round": round_ + 1, "save": mode, "publishes_per_s": round(rate)}
                print(json.dumps({**line, "mosquitto_us_per_publish": round(cpu_us, 1)}), flush=True)
    print_table("Mosquitto saves", "Mosquitto", results)


if __name__ == "__main__":
    main()
