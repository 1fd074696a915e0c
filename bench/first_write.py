"""How long each broker takes from its read of a paced sample to its first write to a subscriber.

    python bench/first_write.py                          # 2 passes: the embedded broker, Mosquitto
    python bench/first_write.py --python /other/venv/bin/python --passes 3
                                                         # another build too, in the same passes

Needs ``perf`` (Debian's ``linux-perf``) with the right to trace system calls (root), and what
``broker_cpu.py`` needs. Each target runs ``broker_cpu.py``'s paced load (100 subscribers, 20,000
deliveries/s, QoS 1, 16 s, the broker alone on core 0) while ``perf record -e raw_syscalls`` traces
core 0 for 4 s in its middle (about 800 samples). For each end of a ``read`` that returned a
sample (150 to 1,000 bytes: a PUBACK is 4), the time to the same thread's next ``write``,
``writev``, ``sendto`` or ``sendmsg`` is that sample's way from its bytes to its first subscriber:
decoding, the admission gate, routing. It is what every subscriber of the sample waits for, and
the one part of a delivery's latency a broker's own code decides alone.

Tracing slows every system call, on every target alike, and the host's load moves the absolute
figures from one pass to the next: compare targets within a pass. Each target's line says its
median and 90th percentile in microseconds; ``--python`` adds an embedded broker run with that
interpreter (a build installed in another virtualenv), so two builds are compared in one pass.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINE = re.compile(
    r"^\s*\S+\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(?: = (-?\d+))?"
)
READ, WRITES = 0, frozenset({1, 20, 44, 46})  # read; write, writev, sendto, sendmsg (x86-64)
SAMPLE_BYTES = range(150, 1001)
"""What a read of one paced sample returns (a ~200-byte JSON sample and its PUBLISH header)."""


def first_writes(lines: Iterable[str]) -> list[float]:
    """Microseconds from each sample's read (its end) to the same thread's next write (its start)."""
    read_at: dict[str, float] = {}
    found = []
    for line in lines:
        match = LINE.match(line)
        if match is None:
            continue
        thread, stamp, kind, number, result = match.groups()
        if kind == "exit" and int(number) == READ and result is not None and int(result) in SAMPLE_BYTES:
            read_at[thread] = float(stamp)
        elif kind == "enter" and int(number) in WRITES and thread in read_at:
            found.append((float(stamp) - read_at.pop(thread)) * 1e6)
    return found


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values``, to a tenth of a microsecond."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def traced(python: str, broker: str, folder: Path) -> list[float]:
    """One paced run of ``broker`` (started by ``python``), core 0 traced for 4 s in its middle."""
    load = subprocess.Popen(
        [python, str(HERE / "broker_cpu.py"), "--brokers", broker, "--subscribers", "100", "--rates", "20000",
         "--burst", "0", "--seconds", "16", "--rounds", "1", "--qos", "1"],
        cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(9)  # the broker is up and the paced load under way (about 3 s to start)
        data = folder / "trace.data"
        subprocess.run(
            ["perf", "record", "-q", "-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit", "-C", "0",
             "-o", str(data), "--", "sleep", "4"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        script = subprocess.run(
            ["perf", "script", "--ns", "-i", str(data)], check=True, capture_output=True, text=True
        )
        return first_writes(script.stdout.splitlines())
    finally:
        load.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--python", action="append", default=[], help="another build's interpreter")
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("first_write.py needs perf (apt-get install linux-perf)")
    targets = [(sys.executable, "radio"), *((python, "radio") for python in args.python)]
    targets.append((sys.executable, "mosquitto"))
    with tempfile.TemporaryDirectory() as folder:
        for number in range(1, args.passes + 1):
            order = targets if number % 2 else targets[::-1]
            for python, broker in order:
                found = traced(python, broker, Path(folder))
                row = {"pass": number, "broker": broker, "python": python if broker == "radio" else None}
                if not found:
                    print(json.dumps(row | {"samples": 0}), flush=True)
                    continue
                row |= {
                    "samples": len(found),
                    "p50_us": percentile(found, 0.5),
                    "p90_us": percentile(found, 0.9),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
