"""radio/statelock.py: a refused command gives its locks back, and a lock given back is no lock."""

from __future__ import annotations

import fcntl
import os

import pytest

from radio import statelock


@pytest.fixture
def held():
    """Whatever a test takes is given back after it, so no lock outlives its test."""
    yield
    statelock.give_back()


def test_giving_back_leaves_no_file_naming_the_part(tmp_path, held):
    statelock.hold(tmp_path, "up")
    assert statelock.holder(tmp_path, "up") == f"radio up (pid {os.getpid()})"
    statelock.give_back()
    assert not (tmp_path / statelock.FOLDER).exists()
    assert statelock.holder(tmp_path, "up") is None


def test_giving_back_keeps_the_folder_of_other_parts(tmp_path, held):
    folder = tmp_path / statelock.FOLDER
    folder.mkdir()
    (folder / "broker.lock").write_text("radio broker (pid 1)\n")
    statelock.hold(tmp_path, "up")
    statelock.give_back()
    assert sorted(p.name for p in folder.iterdir()) == ["broker.lock"]


def test_a_lock_on_a_file_given_back_meanwhile_is_taken_again_on_the_new_one(tmp_path, held, monkeypatch):
    """Between opening the file and locking it, its holder gave it back (removed it, then let go):
    a lock on the removed file would let a third process lock a new file of the same name."""
    real = fcntl.flock
    calls = []

    def flock(fd: int, operation: int) -> None:
        if not calls:  # the holder gives it back just now
            statelock.lock_path(tmp_path, "up").unlink()
        calls.append(fd)
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    statelock.hold(tmp_path, "up")
    monkeypatch.setattr(fcntl, "flock", real)
    assert len(calls) == 2  # the first lock was on the removed file: taken again
    assert statelock.holder(tmp_path, "up") == f"radio up (pid {os.getpid()})"
