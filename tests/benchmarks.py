"""The benchmark scripts of bench/, run in their smoke mode so that they cannot rot unseen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

BENCH: Final = Path(__file__).resolve().parent.parent / "bench"


def smoke(script: str, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``bench/SCRIPT --smoke EXTRA``, run from bench/ (where scripts find each other); it must succeed."""
    result = subprocess.run(
        [sys.executable, script, "--smoke", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=BENCH,
    )
    assert result.returncode == 0, result.stderr
    return result


def rounds(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The rows a benchmark printed, one JSON object a round."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"round"')]
