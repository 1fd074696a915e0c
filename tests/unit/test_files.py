"""radio/files.py: whole files, private from their first byte, and no temporary file left for good."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

from radio import files
from radio.files import open_private, remove_leftovers, write_atomic, write_private


@pytest.fixture
def open_umask():
    """A umask that lets everyone read whatever a careless writer makes."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def modes_when_opened(monkeypatch):
    """The mode of each file at the moment the writer first holds it open, before any byte."""
    seen: list[int] = []
    real = os.fdopen

    def watching(fd, *args, **kwargs):
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real(fd, *args, **kwargs)

    monkeypatch.setattr(files.os, "fdopen", watching)
    return seen


@pytest.mark.usefixtures("open_umask")
def test_a_private_file_is_never_readable_by_others(tmp_path, modes_when_opened):
    path = tmp_path / "secret"
    write_private(path, "s3cret\n")
    write_private(path, b"again\n", durable=True)  # over an existing file too
    assert modes_when_opened == [0o600, 0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"again\n"


@pytest.mark.usefixtures("open_umask")
def test_a_public_file_is_private_until_it_is_whole(tmp_path, modes_when_opened):
    path = tmp_path / "mosquitto.conf"
    write_atomic(path, "listener 1883\n", mode=0o644)
    assert modes_when_opened == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_reader_never_sees_half_a_file(tmp_path):
    path = tmp_path / "acl"
    versions = (b"a" * 1_000_000, b"b" * 1_500_000)
    write_private(path, versions[0])
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(len(path.read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for turn in range(200):
            write_private(path, versions[turn % 2])
    finally:
        done.set()
        reader.join()
    assert len(seen) > 1  # the reader did read while the writer wrote
    assert set(seen) <= {len(v) for v in versions}
    assert [p.name for p in tmp_path.iterdir()] == ["acl"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    folder = tmp_path / "users.conf"
    folder.mkdir()  # renaming a file over a folder fails: a fault made for real
    (folder / "kept").write_text("x")
    with pytest.raises(OSError, match="directory"):
        write_private(folder, "users")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.conf"]
    assert (folder / "kept").read_text() == "x"


def test_a_writer_that_died_mid_write_leaves_nothing_after_the_next_write(tmp_path):
    path = tmp_path / "keys.toml"
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from radio import files\n"
        "files.os.fsync = lambda fd: os._exit(9)\n"  # dies with the text written, before the rename
        "files.write_private(Path(sys.argv[1]), 'half', durable=True)\n"
    )
    died = subprocess.run([sys.executable, "-c", crash, str(path)], check=False)
    assert died.returncode == 9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(".keys.toml.")
    assert not path.exists()
    write_private(path, "whole")
    assert [p.name for p in tmp_path.iterdir()] == ["keys.toml"]
    assert path.read_text() == "whole"


def test_the_temporary_file_of_a_live_writer_is_left_alone(tmp_path):
    path = tmp_path / "passwd"
    live = tmp_path / f".passwd.{os.getppid()}.x1y2.tmp"  # our parent: alive while we run
    live.write_text("being written")
    unrelated = tmp_path / ".passwd.notapid.tmp"
    unrelated.write_text("not ours")
    assert remove_leftovers(path) == []
    write_private(path, "x")
    assert live.exists()
    assert unrelated.exists()


def test_open_private_makes_a_file_0600_and_tightens_an_old_one(tmp_path):
    fresh = tmp_path / "audit.log"
    os.close(open_private(fresh, os.O_WRONLY | os.O_APPEND))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    old = tmp_path / "old.lock"
    old.write_text("kept")
    old.chmod(0o644)
    fd = open_private(old, os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"kept"
    finally:
        os.close(fd)
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
