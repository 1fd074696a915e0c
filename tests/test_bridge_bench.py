"""The HTTP door's slow-client benchmark runs in its smoke mode, so it cannot rot between measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_slow_client_benchmark_runs_and_every_normal_post_gets_through():
    result = subprocess.run(
        [sys.executable, str(BENCH / "slow_clients.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    [row] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"round"')]
    assert row["slow_connected"] == row["slow_clients"] == 20
    assert row["normal_posts"] > 0
    assert row["answered_200"] == row["normal_posts"]
    assert row["stalled_answers"]
    assert all(answer.startswith("408 after") for answer in row["stalled_answers"])
