"""Where the time goes: py-spy on the embedded broker at saturation, and on a bridge worker under load.

    pip install py-spy
    python bench/profile.py                 # 15 s of each; prints the top costs of each
    python bench/profile.py --seconds 30

The broker is saturated by ``bench/fanout.py``'s load (100 subscribers, QoS 0, TCP); the bridge by
``wrk`` as in ``bench/http_door.py``. py-spy samples the process (100 Hz) without touching it;
the report lists the functions with the most samples on the stack ("inclusive") and at its top
("self"), as shares of the samples taken while the process was running Python code.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fanout import Platform, measure
from http_door import bench_home, start

HERE = Path(__file__).resolve().parent
LISTEN_ANY = ("--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0")


def record(pid: int, seconds: int, out: Path) -> None:
    """py-spy, collapsed stacks; --nonblocking so the process runs at full speed."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--format", "raw"]
    subprocess.run(
        [*command, "--nonblocking", "-o", str(out)],
        check=True,
        capture_output=True,
    )


def report(title: str, stacks: Path, top: int = 12) -> None:
    """The functions with the most samples, inclusive and self."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if not any(" (" in f for f in frames):
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"\n## {title}: {total} samples\n")
    print("| inclusive | function |\n|---|---|")
    skip = (  # the frames every sample passes through: the event loop, gunicorn's worker loop
        *("asyncio/runners.py", "base_events.py", "events.py", "<module>", "cli.py", "threading.py"),
        *("runpy", "arbiter.py", "bridge/run.py", "workers/base.py", "SyncWorker.run"),
    )
    shown = [(f, n) for f, n in inclusive.most_common() if not any(s in f for s in skip)][:top]
    for frame, count in shown:
        print(f"| {count / total:.0%} | `{frame}` |")
    print("\n| self | function |\n|---|---|")
    for frame, count in own.most_common(top):
        print(f"| {count / total:.0%} | `{frame}` |")


def profile_broker(seconds: int, folder: Path) -> None:
    platform = Platform("radio", folder)
    out = folder / "broker.txt"
    try:
        recorder = threading.Thread(target=record, args=(platform.process.pid, seconds, out))
        recorder.start()
        while recorder.is_alive():
            asyncio.run(measure(platform, "tcp", 0, 100, 600))
    finally:
        platform.stop()
    report("Embedded broker, fan-out to 100 subscribers at QoS 0", out)


def profile_bridge(seconds: int, folder: Path) -> None:
    env, key = bench_home(folder)
    radio = [sys.executable, "-m", "radio"]
    broker, mqtt = start([*radio, "broker", *LISTEN_ANY], r"mqtt://127\.0\.0\.1:(\d+)", env)
    bridge, url = start(
        [*radio, "bridge", "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{mqtt}"],
        r"POST (http://\S+)/publish",
        env,
    )
    out = folder / "bridge.txt"
    try:
        import psutil  # noqa: PLC0415 - only here

        deadline = time.monotonic() + 20
        while not (workers := psutil.Process(bridge.pid).children(recursive=True)):  # gunicorn forks them
            assert time.monotonic() < deadline, "no bridge worker"
            time.sleep(0.1)
        worker = workers[0]
        load = subprocess.Popen(
            ["wrk", "-t2", "-c50", f"-d{seconds + 2}s", "-s", str(HERE / "post.lua"), url + "/publish"],
            stdout=subprocess.DEVNULL,
            env={**env, "RADIO_BENCH_KEY": key},
        )
        record(worker.pid, seconds, out)
        load.wait()
    finally:
        bridge.terminate()
        bridge.wait(30)
        broker.terminate()
        broker.wait(30)
    report("Bridge worker under wrk -c50", out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as folder:
        profile_broker(args.seconds, Path(folder))
    with tempfile.TemporaryDirectory() as folder:
        profile_bridge(args.seconds, Path(folder))


if __name__ == "__main__":
    main()
