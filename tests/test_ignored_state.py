"""No state file or secret a radio command writes in the checkout can reach a commit.

The README's commands run for real in a git repository holding this checkout's .gitignore, at its
root and in a folder below it (a state folder is wherever radio.toml is): the quick start's
`radio up`, a key, development certificates, the NATS and Mosquitto exports. Git must then see
nothing to add. The build context's own rule (.dockerignore) is checked by the real image build.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from commands import ANY_PORTS, read_banner, started_in

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"demo.key", "bridge.key", "recorder.key", "server.key", "cluster.secret"}
STATE = {"radio.toml", "keys.toml", "broker.db", "history.db", "usage.db", "users.conf", "passwd", "acl"}


def radio(folder: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "radio", *args], cwd=folder, check=True, capture_output=True, timeout=60
    )


def quick_start(folder: Path) -> None:
    """`radio up` until its banner, then Ctrl-C: every state file of a platform that ran."""
    process = started_in(
        folder, "up", *ANY_PORTS, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    read_banner(process)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 0


def make_state(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    quick_start(folder)
    radio(folder, "keys", "add", "gen", "--publish", "sample_net")
    radio(folder, "certs", "dev", "--dir", "certs")
    radio(folder, "mosquitto", "export", "--dir", "mosquitto")
    radio(folder, "nats", "export", "--dir", "cluster", "--nodes", "3")


def git(repo: Path, *args: str) -> list[str]:
    done = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, timeout=60)
    return done.stdout.splitlines()


@pytest.mark.slow  # copies the checkout and runs git over it: 11 s
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_no_state_file_or_secret_can_reach_a_commit(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    make_state(repo)
    make_state(repo / "demo")

    made = {Path(name).name for name in git(repo, "ls-files", "--others")}
    assert made >= SECRETS | STATE  # the commands did write them: the check below means something
    assert git(repo, "ls-files", "--others", "--exclude-standard") == [".gitignore"]
