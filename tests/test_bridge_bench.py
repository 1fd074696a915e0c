"""The HTTP door's slow-client benchmark runs in its smoke mode, so it cannot rot between measurements."""

from __future__ import annotations

import pytest
from benchmarks import rounds, smoke

pytestmark = pytest.mark.slow


def test_the_slow_client_benchmark_runs_and_every_normal_post_gets_through():
    [row] = rounds(smoke("slow_clients.py"))
    assert row["slow_connected"] == row["slow_clients"] == 20
    assert row["normal_posts"] > 0
    assert row["answered_200"] == row["normal_posts"]
    assert row["stalled_answers"]
    assert all(answer.startswith("408 after") for answer in row["stalled_answers"])
