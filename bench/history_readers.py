"""Many parallel readers of a large history: the bridge's memory, and POST /publish meanwhile.

    python bench/history_readers.py                       # 3 rounds: 32 readers, 20 s each
    python bench/history_readers.py --page-bytes 1073741824 --history-threads 16   # no real bound
    python bench/history_readers.py --smoke               # 1 round: 4 readers, 2 s

``radio broker`` and ``radio bridge`` (2 workers, as shipped) run as processes of their own. A
public network's history holds 300 samples of about 60 KB (arrays of floats, written straight
into ``history.db``). Each round: the p50 of ``POST /publish`` alone (sequential, keep-alive);
then ``--readers`` connections (``wrk``, in C, so that the publisher measured here does not share
the readers' interpreter) each asking ``GET /networks/big/samples?limit=1000`` over and over for
``--seconds`` while the same publisher goes on, and the bridge's resident memory (arbiter
and workers, summed) is sampled every 100 ms; then its memory 2 s after the readers stop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from radio.history_store import HistoryStore
from recorder import RADIO, started

CONFIG = """\
[networks.big]
public = true
retain = false
history = 1000

[networks.pub]
public = true

[broker]
persistence = false
"""
SAMPLES = 300
AT = "2026-12-06T10:00:00.000Z"


def fill(history: Path) -> int:
    """300 samples of about 60 KB each; returns one sample's size."""
    store = HistoryStore(history)
    generator = random.Random(7)  # noqa: S311 - sample data, not secrets
    payload = ""
    for i in range(SAMPLES):
        values = [round(generator.uniform(-1000, 1000), 9) for _ in range(4000)]
        payload = json.dumps({"i": i, "values": values})[:60_000].rsplit(",", 1)[0] + "]}"
        store.append("big", "networks/big", payload, AT, 1000)
    store.close()
    return len(payload)


def resident(process: psutil.Process) -> int:
    """Bytes of memory the bridge holds: its arbiter and every worker."""
    total = 0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker may be replaced meanwhile
            total += each.memory_info().rss
    return total


def publish_latencies(url: str, secret: str, stop: threading.Event, count: int | None = None) -> list[float]:
    """Sequential POST /publish on one keep-alive connection, until ``stop`` or ``count``."""
    latencies: list[float] = []
    with requests.Session() as session:
        session.headers["API-KEY"] = secret
        n = 0
        while not stop.is_set() and (count is None or n < count):
            began = time.perf_counter()
            answer = session.post(f"{url}/publish", json={"network": "pub", "data": {"n": n}}, timeout=30)
            latencies.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
            n += 1
    return latencies


def readers_run(url: str, readers: int, seconds: float) -> subprocess.Popen[str]:
    """``wrk``: the readers in C, so that the publisher measured here does not share their GIL."""
    return subprocess.Popen(
        [
            "wrk",
            "-t",
            "2",
            "-c",
            str(readers),
            "-d",
            f"{seconds:g}s",
            "--timeout",
            "60s",
            f"{url}/networks/big/samples?limit=1000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def wrk_totals(report: str) -> tuple[int, float]:
    """Requests answered, and megabytes read, from wrk's report."""
    found = re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)(\w+) read", report)
    assert found, report
    scale = {"B": 1 / 1024**2, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[found[3]]
    return int(found[1]), float(found[2]) * scale


def one_round(
    url: str, secret: str, bridge: psutil.Process, readers: int, seconds: float
) -> dict[str, float]:
    alone = publish_latencies(url, secret, threading.Event(), count=200)
    stop = threading.Event()
    largest = len(requests.get(f"{url}/networks/big/samples?limit=1000", timeout=60).content)
    before = resident(bridge)
    wrk = readers_run(url, readers, seconds)
    peak = [before]

    def watch() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], resident(bridge))

    watcher = threading.Thread(target=watch)
    watcher.start()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    loaded = publish_latencies(url, secret, stop)
    report, _ = wrk.communicate()
    watcher.join()
    answers, read_mb = wrk_totals(report)
    time.sleep(2)  # what the bridge keeps once the readers are gone
    after = resident(bridge)
    mb = 1024 * 1024
    return {
        "publish_p50_ms_alone": statistics.median(alone) * 1000,
        "publish_p50_ms_with_readers": statistics.median(loaded) * 1000,
        "publish_p99_ms_with_readers": statistics.quantiles(loaded, n=100)[98] * 1000,
        "publishes_with_readers": len(loaded),
        "history_answers": answers,
        "history_mb_read": read_mb,
        "largest_answer_mb": largest / mb,
        "bridge_rss_mb_before": before / mb,
        "bridge_rss_mb_peak": peak[0] / mb,
        "bridge_rss_mb_after": after / mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--page-bytes", type=int, default=None, help="[bridge] history_page_bytes")
    parser.add_argument("--history-threads", type=int, default=None, help="[bridge] history_threads")
    parser.add_argument("--smoke", action="store_true", help="1 round of 4 readers for 2 s")
    args = parser.parse_args()
    rounds, readers, seconds = (1, 4, 2.0) if args.smoke else (args.rounds, args.readers, args.seconds)
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "radio.toml"
        bridge_table = "".join(
            f"{name} = {value}\n"
            for name, value in (
                ("history_page_bytes", args.page_bytes),
                ("history_threads", args.history_threads),
            )
            if value is not None
        )
        config.write_text(CONFIG + (f"\n[bridge]\n{bridge_table}" if bridge_table else ""))
        common = ["--config", str(config)]
        secret = subprocess.run(
            [*RADIO, "keys", "add", "bench", "--publish", "pub", *common],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        size = fill(Path(folder) / "history.db")
        broker, banner = started(
            [*RADIO, "broker", *common, "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"], "mqtt://"
        )
        port = int(banner.split("mqtt://")[1].split(":")[1].split()[0].rstrip("/"))
        bridge, line = started(
            [*RADIO, "bridge", *common, "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{port}"],
            "POST http",
        )
        url = line.split("POST ")[1].split("/publish")[0]
        try:
            while requests.get(url + "/healthz", timeout=10).status_code != 200:
                time.sleep(0.1)
            for n in range(rounds):
                result = one_round(url, secret, psutil.Process(bridge.pid), readers, seconds)
                print(
                    json.dumps(
                        {
                            "round": n + 1,
                            "readers": readers,
                            "sample_bytes": size,
                            "page_bytes": args.page_bytes or "default",
                            "history_threads": args.history_threads or "default",
                            **{k: round(v, 2) for k, v in result.items()},
                        }
                    ),
                    flush=True,
                )
        finally:
            for process in (bridge, broker):
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
