"""The README works as written: its quick start is what CI runs, and its examples run when pasted."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from commands import read_banner
from conftest import copy_checkout
from test_platform import start_up

from radio.cli import up as up_module
from radio.cli.main import _parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARK = "<!-- tests/test_readme.py runs this block -->"


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def runnable_blocks(language: str = "sh") -> list[str]:
    return re.findall(re.escape(MARK) + rf"\n```{language}\n(.+?)\n```", README, re.DOTALL)


def test_every_radio_command_the_documents_name_exists():
    """A reader who types a command the README or docs/ name gets that command, not a usage error."""
    (subcommands,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    commands = subcommands.choices
    named = {
        (document.name, command)
        for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for command in re.findall(r"`radio ([a-z][a-z-]*)", document.read_text())
    }
    assert {(name, command) for name, command in named if command not in commands} == set()


def test_the_quick_start_is_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert commands[0].endswith("radio up")
    assert "pytest" in commands[1]
    # Each makes and uses a virtual environment: pip may not install into a system's Python.
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && ") for c in commands)


PROBE = "import sys, sysconfig; print(sys.version_info >= (3, 11)); print(sysconfig.get_path('stdlib'))"


def externally_managed_python() -> str | None:
    """A Python 3.11+ whose own packages pip may not touch (PEP 668), as Debian and Ubuntu ship it."""
    for candidate in ("/usr/bin/python3", shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate is None or not Path(candidate).exists():
            continue
        probe = subprocess.run(
            [candidate, "-c", PROBE],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        lines = probe.stdout.split()
        if probe.returncode == 0 and lines[0] == "True" and (Path(lines[1]) / "EXTERNALLY-MANAGED").exists():
            return candidate
    return None


@pytest.mark.slow
def test_the_quick_start_works_as_written_on_an_externally_managed_python(tmp_path):
    """The first command, pasted into a fresh clone where `python3` is Debian's: Radio comes up."""
    python = externally_managed_python()
    if python is None:
        pytest.skip("no externally managed Python 3.11+ on this machine (Debian's /usr/bin/python3)")
    clone = tmp_path / "radio"
    copy_checkout(clone)
    # Free ports, not the defaults another platform on this machine may hold.
    (clone / "radio.toml").write_text(
        '[broker]\nmqtt = "127.0.0.1:0"\nwebsocket = "127.0.0.1:0"\n\n[bridge]\nlisten = "127.0.0.1:0"\n\n'
        "[networks.sample_net]\npublic = true\n"
    )
    bin_dir = tmp_path / "bin"  # `python3` is the externally managed one, whatever runs this test
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RADIO_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    refused = subprocess.run(
        ["python3", "-m", "pip", "install", "--dry-run", "-e", "."],
        cwd=clone, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "externally-managed-environment" in refused.stderr  # what the old quick start ran into
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", quick_start_commands()[0]],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        banner = read_banner(process)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert "Radio is up." in banner, err[-3000:]
    assert (clone / ".venv" / "bin" / "radio").exists()


def test_the_readmes_unknown_setting_line_is_what_radio_prints(tmp_path):
    """The sample error names the known settings of a network as the code knows them."""
    shown = README.split("A typo is never ignored", 1)[1].split(
        MARK.replace("runs this block", "checks this line"), 1
    )[1]
    line = re.search(r"```\n(radio: .+)\n```", shown)
    assert line is not None
    config = tmp_path / "radio.toml"
    config.write_text("[networks.city_private]\npublik = false\n")
    result = subprocess.run(
        [sys.executable, "-m", "radio", "keys", "list", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line[1].replace("/srv/radio/radio.toml", str(config))]


def test_no_readme_block_makes_a_key_an_earlier_block_left_in_place():
    """A reader runs the blocks in order on one platform: a name made twice is refused (409).

    Names are followed through every shell block: made by `radio keys add` or POST /admin/keys,
    gone by `radio keys revoke` or DELETE /admin/keys/NAME.
    """
    made: dict[str, str] = {}
    twice = []
    for block in re.findall(r"```sh\n(.+?)\n```", README, re.DOTALL):
        events = [
            (m.start(), "add" if m[1] or m[2] else "gone", m[1] or m[2] or m[3] or m[4])
            for m in re.finditer(
                r"radio keys add ([a-z0-9][\w.-]*)|\"name\": \"([\w.-]+)\""
                r"|radio keys revoke ([a-z0-9][\w.-]*)|-X DELETE \S*/admin/keys/([\w.-]+)",
                block,
            )
        ]
        assert events or "keys" not in block or "radio keys add" not in block
        for _, kind, name in sorted(events):
            if kind == "gone":
                made.pop(name, None)
            elif name in made:
                twice.append(f"{name}: made in {made[name]!r} and again in {block.splitlines()[0]!r}")
            else:
                made[name] = block.splitlines()[0]
    assert "by-hand" in made  # the walk saw the blocks
    assert not twice, twice


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
        "admin API:",
        "metrics:",
    ):
        assert label in source
        assert label in README


def run_python_example(ws: int, env: dict[str, str], folder: Path) -> list[str]:
    """The README's Python listener, pasted into a file and run, until it printed the hand-made sample."""
    (example,) = runnable_blocks("python")
    script = folder / "listen_example.py"
    script.write_text(example.replace("127.0.0.1:8080", f"127.0.0.1:{ws}"))
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the network's retained samples first, the simulator's next
            lines.append(line.rstrip("\n"))
            if "by-hand" in line or len(lines) > 20:
                break
        assert process.poll() is None, process.communicate(timeout=30)[1]  # it runs on
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert "Traceback" not in err, err
    return lines


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
        python_lines = run_python_example(ws, env, tmp_path)
    finally:
        up.process.terminate()
        up.process.communicate(timeout=60)

    assert "networks/sample_net/by-hand {'speed': 42}" in python_lines
    by_hand, keys, http_door = outputs
    lines = by_hand.splitlines()
    assert lines[0] == 'networks/sample_net/by-hand {"speed": 42}'
    assert len(lines) == 3  # and two JSON lines from radio listen
    assert re.search(r"^analyst\s+-\s+city_private\s", keys, re.MULTILINE)
    assert re.search(r"^ops\s+\(admin: any topic\)", keys, re.MULTILINE)
    assert http_door.replace(" ", "").strip() == '{"message":"OK"}'
