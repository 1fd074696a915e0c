"""How a NATS node's reload grows with the registry: users.conf size, export and SIGHUP-to-reloaded time.

    python bench/nats_reload.py 10 1000 10000      # key counts

For each count: a registry of that many keys over 100 networks (one bcrypt hash shared by all,
to keep the setup fast: NATS does not check hashes at load), exported for one node; the node is
started, sent SIGHUP, and timed until its log says the configuration was reloaded.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from radio.broker.nats import find_binary
from radio.broker.nats_conf import export, plan
from radio.config import load_settings
from radio.keys import Key, bcrypt_hash
from radio.registry import Registry


def wait_for(log: Path, text: str, after: int = 0) -> None:
    deadline = time.monotonic() + 120
    while text not in log.read_text()[after:]:
        assert time.monotonic() < deadline, f"no {text!r} in {log}"
        time.sleep(0.01)


def measure(folder: Path, count: int) -> str:
    config = folder / "radio.toml"
    networks = "".join(f"[networks.n{i}]\n" for i in range(100))
    config.write_text('[broker]\nmqtt = "127.0.0.1:0"\nwebsocket = "127.0.0.1:0"\n' + networks)
    settings = load_settings(config)
    shared = bcrypt_hash("not a real secret")
    keys = {
        f"k{i}": Key(
            name=f"k{i}",
            digest=f"{i:016x}" * 4,
            mosquitto="",
            publish=frozenset({f"n{i % 100}"}),
            subscribe=frozenset({f"n{(i + 1) % 100}"}),
            bcrypt=shared,
        )
        for i in range(count)
    }
    registry = Registry(settings.networks, keys)
    started = time.perf_counter()
    [conf] = export(settings, registry, folder / "nats", plan(settings, 1))
    exported = time.perf_counter() - started
    size = (folder / "nats" / "users.conf").stat().st_size
    log = folder / "node.log"
    with log.open("w") as out:
        node = subprocess.Popen([find_binary(), "-c", str(conf)], stderr=out)
        try:
            wait_for(log, "Server is ready")
            mark = len(log.read_text())
            started = time.perf_counter()
            node.send_signal(signal.SIGHUP)
            wait_for(log, "Reloaded server configuration", mark)
            reloaded = time.perf_counter() - started
        finally:
            node.terminate()
            node.wait()
    return (
        f"{count} keys: users.conf {size / 1e6:.1f} MB, export {exported:.2f}s, "
        f"SIGHUP to reloaded {reloaded:.2f}s"
    )


def main() -> None:
    for count in [int(a) for a in sys.argv[1:]] or [10, 1000, 10000]:
        with tempfile.TemporaryDirectory() as folder:
            print(measure(Path(folder), count), flush=True)


if __name__ == "__main__":
    main()
