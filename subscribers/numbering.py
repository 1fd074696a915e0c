"""Live samples with the platform's number: each looked up in the history as it arrives.

The recorder numbers every sample the platform accepts (docs/history.md); MQTT 3.1.1 has no
room to carry that number to listeners. So a listener that can read the history looks each live
sample up there, and prints it with its ``seq``: what it printed last is then where
``--since`` resumes.

A live sample is the history's next entry of its topic with the same content, after the last one
matched in its network: one broker hands samples to the recorder and to this listener in the same
order, so the match goes forward. A retained sample (published before the subscription) is the
newest equal entry of its topic. The recorder numbers a sample a few milliseconds after the broker
routes it: a sample not found yet is looked up again, for up to ``WAIT`` seconds, and then printed
without a number; at a stop, what waits is looked up once more. Samples leave in the order they
came, numbered or not. A network whose history keeps no samples (``history = 0``) is not looked
up, nor are any once the history cannot be read (the listener goes on, saying so once).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from radio.subscribers import history

WAIT: Final = 2.0
"""Seconds a live sample waits for the recorder to number it before it is printed without."""
POLL: Final = 0.05
"""Seconds between two looks at the history while a sample waits."""
KEPT: Final = 10_000
"""History entries kept per network for matching; older ones were missed by this listener."""


@dataclass
class _Network:
    after: int
    """The last number fetched from the history."""
    entries: list[tuple[int, str, str]] = field(default_factory=list)
    """History entries after the last one matched, not matched yet: number, topic, content."""


@dataclass
class _Waiting:
    sample: Any
    """A ``Sample`` (a frozen dataclass): handed on as a copy with its ``seq``."""
    retained: bool
    deadline: float


class Numbering:
    """Looks live samples up in the history, in a thread, and hands them on in order."""

    def __init__(
        self,
        fetch: Callable[..., history.HistoryPage],
        emit: Callable[[Any], None],
        notice: Callable[[str], None],
    ) -> None:
        self._fetch = fetch
        """``history.fetch`` bound to the bridge, the key and the CA: (network, after=, limit=)."""
        self._emit = emit
        self._notice = notice
        self._networks: dict[str, _Network] = {}
        self._lock = threading.Lock()
        self._incoming: queue.Queue[_Waiting | None] = queue.Queue()
        self._off = False
        self._thread = threading.Thread(target=self._run, name="radio-numbering", daemon=True)
        self._thread.start()

    def follow(self, network: str, head: history.HistoryPage, after: int | None = None) -> None:
        """Number the live samples of a network, from after ``after`` (default: the history's end)."""
        if head.first is None and head.last > 0:
            return  # its history keeps nothing: no sample could be found there
        start = head.last if after is None else after
        with self._lock:
            self._networks[network] = _Network(after=start)

    def add(self, sample: Any, *, retained: bool = False) -> None:
        """A live sample, to be handed on with its number once found (or without, after ``WAIT``)."""
        self._incoming.put(_Waiting(sample, retained, time.monotonic() + WAIT))

    def stop(self) -> None:
        """Hand on what waits, numbered if the history has it by now, and end the thread."""
        self._incoming.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        waiting: list[_Waiting] = []
        while True:
            try:
                item = self._incoming.get(timeout=POLL if waiting else None)
                while item is not None:
                    waiting.append(item)
                    item = self._incoming.get_nowait()
            except queue.Empty:
                pass
            else:  # None: stopping. One last look: the recorder may have numbered them since.
                for late in waiting:
                    late.deadline = 0.0
                self._hand_on(waiting)
                return
            waiting = self._hand_on(waiting)

    def _hand_on(self, waiting: list[_Waiting]) -> list[_Waiting]:
        """Hand on the samples at the front that are numbered or waited long enough; the rest wait."""
        fetched: set[str] = set()
        while waiting:
            first = waiting[0]
            with self._lock:
                state = None if self._off else self._networks.get(first.sample.network)
            seq = None if state is None else self._number(first, state, fetched)
            if seq is None and state is not None and not self._off and time.monotonic() < first.deadline:
                return waiting
            self._emit(first.sample if seq is None else replace(first.sample, seq=seq))
            waiting.pop(0)
        return waiting

    def _number(self, item: _Waiting, state: _Network, fetched: set[str]) -> int | None:
        """The sample's number, fetching the history once per turn if needed; None if not found."""
        sample = item.sample
        content = canonical(sample.data)
        if item.retained:
            return self._retained(sample, content)
        found = _take(state, sample.topic, content)
        if found is None and sample.network not in fetched:
            fetched.add(sample.network)
            self._read_on(sample.network, state)
            found = _take(state, sample.topic, content)
        return found

    def _read_on(self, network: str, state: _Network) -> None:
        """Fetch the history after what was fetched, page by page."""
        try:
            while True:
                page = self._fetch(network, after=state.after)
                for item in page.samples:
                    seq = int(item["seq"])
                    topic = str(item.get("topic") or "")
                    state.entries.append((seq, topic, canonical(item["data"])))
                    state.after = seq
                del state.entries[:-KEPT]
                if len(page.samples) < history.PAGE:
                    return
        except (history.HistoryUnavailable, history.HistoryRefused) as exc:
            self._off = True
            self._notice(f"cannot read the history any more ({exc}): live samples go on without seq")

    def _retained(self, sample: Any, content: str) -> int | None:
        """A retained sample: the newest entry of its topic with that content, among the latest."""
        try:
            page = self._fetch(sample.network, limit=history.PAGE)
        except (history.HistoryUnavailable, history.HistoryRefused):
            return None
        for item in reversed(page.samples):
            if str(item.get("topic") or "") == sample.topic and canonical(item["data"]) == content:
                return int(item["seq"])
        return None


def _take(state: _Network, topic: str, content: str) -> int | None:
    """The first entry of the topic with that content: matched, and the cursor moves past it."""
    for index, (seq, entry_topic, entry) in enumerate(state.entries):
        if entry_topic == topic and entry == content:
            del state.entries[: index + 1]
            return seq
    return None


def canonical(data: Any) -> str:
    """A sample's content as a comparable text; one too deep to write out matches nothing."""
    try:
        return json.dumps(data, sort_keys=True, separators=(",", ":"))
    except (RecursionError, ValueError):
        return f"unmatched-{id(data)}"
