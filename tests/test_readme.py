"""The README works as written: its quick start is what CI runs, and its examples run when pasted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_platform import start_up

from radio.cli import up as up_module

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARK = "<!-- tests/test_readme.py runs this block -->"


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def runnable_blocks() -> list[str]:
    return re.findall(re.escape(MARK) + r"\n```sh\n(.+?)\n```", README, re.DOTALL)


def test_the_quick_start_is_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("radio up")
    assert "pytest" in commands[1]


def test_ci_runs_the_readmes_test_command_word_for_word():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci


def test_the_readme_shows_what_radio_up_prints():
    source = Path(up_module.__file__).read_text()  # the banner's lines, as the code writes them
    for label in (
        "MQTT over TCP:",
        "configuration:",
        "state:",
        "other radio commands:",
        "demo publisher key:",
    ):
        assert label in source
        assert label in README


@pytest.mark.slow
@pytest.mark.mosquitto_clients
def test_the_readmes_examples_work_when_pasted_as_blocks(tmp_path):
    """Each marked block runs as one paste into bash, in the folder where `radio up` runs.

    `radio up` runs on free ports; the blocks' default ports are rewritten to those, and so is
    the configuration it wrote, so that commands without --url find the running platform.
    """
    if shutil.which("mosquitto_pub") is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto-clients is missing: .ci/run installs it", pytrace=False)
        pytest.skip("mosquitto-clients is not installed")
    blocks = runnable_blocks()
    assert len(blocks) == 3
    env = {k: v for k, v in os.environ.items() if k not in ("RADIO_CONFIG", "RADIO_KEYS", "RADIO_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this interpreter's radio
    up = start_up(tmp_path)
    try:
        mqtt, ws, http = up.ports
        config = tmp_path / "radio.toml"
        text = config.read_text()
        text = text.replace("127.0.0.1:1883", f"127.0.0.1:{mqtt}").replace(
            "127.0.0.1:8080", f"127.0.0.1:{ws}"
        )
        config.write_text(text.replace("127.0.0.1:5000", f"127.0.0.1:{http}"))

        outputs = []
        for block in blocks:
            script = (
                block.replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {mqtt}")
                .replace("127.0.0.1:5000", f"127.0.0.1:{http}")
                .replace("127.0.0.1:8080", f"127.0.0.1:{ws}")
            )
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", script],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, f"{block}\n{result.stdout}\n{result.stderr}"
            assert "Traceback" not in result.stderr
            outputs.append(result.stdout)
    finally:
        up.process.terminate()
        up.process.communicate(timeout=60)

    by_hand, keys, http_door = outputs
    lines = by_hand.splitlines()
    assert lines[0] == 'networks/sample_net/by-hand {"speed": 42}'
    assert len(lines) == 3  # and two JSON lines from radio listen
    assert re.search(r"^analyst\s+-\s+city_private\s", keys, re.MULTILINE)
    assert re.search(r"^ops\s+\(admin: any topic\)", keys, re.MULTILINE)
    assert http_door.replace(" ", "").strip() == '{"message":"OK"}'
