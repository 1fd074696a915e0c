"""CPU of one run of a short ``radio`` command: its interpreter start, its imports and its work.

    python bench/cli_start.py --trees .,/path/to/other/checkout --runs 15

Each command runs as a process of its own (``python -m radio ...``) in a fresh folder holding
one key, as an operator or a test runs it. Its CPU (user and system) is what the kernel reports
when it ends (``os.wait4``), so other load on the machine stretches it far less than its wall
time; the least of the runs is the figure to compare. ``--trees`` runs the same commands from
other checkouts (each first on ``PYTHONPATH``), alternated run by run. The last command is the
imports of ``radio bridge``'s main process, which every bridge start pays before it serves.

Prints one JSON line per run, then the least and the median per tree and command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RADIO = (sys.executable, "-m", "radio")
BRIDGE_IMPORTS = (sys.executable, "-c", "from radio.cli.main import main; from radio.bridge.run import run")


def commands(config: str) -> dict[str, tuple[str, ...]]:
    return {
        "radio --help": (*RADIO, "--help"),
        "radio keys list": (*RADIO, "keys", "list", "--config", config),
        "radio keys edit": (*RADIO, "keys", "edit", "k", "--publish", "A", "--config", config),
        "radio health": (*RADIO, "health", "--config", config, "--timeout", "1"),
        "radio bridge's imports": BRIDGE_IMPORTS,
    }


def cpu_seconds(command: tuple[str, ...], tree: str) -> float:
    """User and system CPU of one run of the command, from the tree first on PYTHONPATH."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": tree},
    )
    _, _, usage = os.wait4(process.pid, 0)
    process.returncode = 0  # reaped above
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=".", help="checkouts to compare, comma-separated (.: this one)")
    parser.add_argument("--runs", type=int, default=15, help="runs of each command in each tree")
    parser.add_argument("--smoke", action="store_true", help="one run of each: checks the script works")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = [str(here) if t == "." else str(Path(t).resolve()) for t in args.trees.split(",")]
    runs = 1 if args.smoke else args.runs
    folder = Path(tempfile.mkdtemp(prefix="radio-cli-start-"))
    config = folder / "radio.toml"
    config.write_text("[networks.A]\npublic = false\n")
    made = subprocess.run(
        [*RADIO, "keys", "add", "k", "--publish", "A", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": trees[0]},
    )
    assert made.returncode == 0, made.stderr
    taken: dict[tuple[str, str], list[float]] = {}
    for run in range(runs):
        for name, command in commands(str(config)).items():
            for tree in trees if run % 2 == 0 else trees[::-1]:
                cpu = cpu_seconds(command, tree)
                taken.setdefault((tree, name), []).append(cpu)
                row = {"round": run, "tree": tree, "command": name, "cpu_ms": round(1000 * cpu, 1)}
                print(json.dumps(row), flush=True)
    for (tree, name), seconds in taken.items():
        least, median = 1000 * min(seconds), 1000 * statistics.median(seconds)
        print(f"{tree}  {name:24s} least {least:6.1f} ms  median {median:6.1f} ms  ({len(seconds)} runs)")


if __name__ == "__main__":
    main()
