"""The benchmark scripts run in a small smoke mode, so they cannot rot between measurements."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_http_door_benchmark_runs_and_reports_both_targets():
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run installs it", pytrace=False)
        pytest.skip("wrk is not installed (apt-get install wrk)")
    result = subprocess.run(
        [sys.executable, str(BENCH / "http_door.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rounds = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"round"')]
    assert {r["target"] for r in rounds} == {"bridge", "bare"}
    assert all(r["rps"] > 0 and r["non_2xx"] == 0 for r in rounds)
    assert '"bridge_over_bare"' in result.stdout
