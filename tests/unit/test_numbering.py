"""Live samples numbered from the history: what a listener hands on, and with which number."""

from __future__ import annotations

import threading

from radio.subscribers import numbering
from radio.subscribers.history import HistoryPage
from radio.subscribers.listener import Sample


def test_a_sample_waiting_for_its_number_at_the_stop_is_looked_up_once_more(monkeypatch):
    """A sample taken just before Ctrl-C is numbered a few milliseconds later by the recorder: the
    last line printed is where `--since` resumes, so it carries its number if the history has it."""
    monkeypatch.setattr(numbering, "POLL", 60.0)  # no second look but the one the stop makes
    recorded = threading.Event()
    looked = threading.Event()
    entry = {"seq": 7, "topic": "networks/net", "received_at": "t", "data": {"i": 1}}

    def fetch(network, after=0, limit=1000):
        del network, limit
        found = [entry] if recorded.is_set() and after < 7 else []
        looked.set()
        return HistoryPage(found, 1 if found else None, 7 if found else 6)

    emitted = []
    notices = []
    numbers = numbering.Numbering(fetch, emitted.append, notices.append)
    numbers.follow("net", HistoryPage([], 1, 6))
    numbers.add(Sample("net", "networks/net", "now", {"i": 1}))
    assert looked.wait(10)  # not in the history yet: it waits
    recorded.set()  # the recorder numbers it
    numbers.stop()
    assert [(s.data, s.seq) for s in emitted] == [({"i": 1}, 7)]
    assert notices == []
