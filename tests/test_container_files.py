"""The image's files agree with each other and with the README, on machines that cannot build it.

`.ci/image-check` builds and runs the image where podman can be installed; these checks hold the
promises it relies on everywhere: the HEALTHCHECK asks the address the command serves, and the
README's container lines are the ones that script finds and runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- .ci/image-check runs this block -->"


def instruction(name: str) -> list[str]:
    """The exec-form arguments of a Dockerfile instruction (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(rf"^{name}\b.*?(\[.*\])\s*$", text, re.MULTILINE)
    assert match is not None, f"no {name} in exec form"
    return json.loads(match[1])


def marked_blocks() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    return [
        part.split("```sh\n", 1)[1].split("\n```", 1)[0].splitlines() for part in text.split(MARK + "\n")[1:]
    ]


def test_the_healthcheck_asks_where_the_command_serves_http():
    command, check = instruction("CMD"), instruction("HEALTHCHECK")
    assert command[:2] == ["radio", "up"]
    assert check[:2] == ["radio", "health"]
    assert check[check.index("--http") + 1] == command[command.index("--http") + 1]


def test_the_readmes_container_lines_are_the_ones_the_image_check_runs():
    blocks = marked_blocks()
    script = (ROOT / ".ci" / "image-check").read_text()
    assert f'grep -cxF "$marker" "$root/README.md")" = {len(blocks)} ]' in script
    assert blocks[0][0] == "docker build -t radio ."
    assert blocks[1][0].startswith("podman build --format docker ")
    runs = [line for block in blocks for line in block if " run " in line]
    assert [line.split()[0] for line in runs[:2]] == ["docker", "podman"]
    for line in runs:
        published = re.findall(r" -p (\d+:\d+)(?= )", line)
        assert "5000:5000" in published, line
        assert {"1883:1883", "8080:8080"} <= set(published) or {"8883:8883", "8081:8081"} <= set(published)
        for port in published:  # the script moves each to a free loopback port
            assert f'-e "s/-p {port}/' in script
        assert re.search(r" -v [\w-]+:/data ", line), line
