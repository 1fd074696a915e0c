"""Which sessions a topic reaches: exact filters by topic, wildcard filters in a tree by level.

A message visits only the filters that can match it, never the whole table: one dict lookup for
the exact filters (most listeners subscribe to one network's topic), and a walk down the tree
for the wildcard ones, one branch per level plus the ``+`` and ``#`` branches. Subscribing,
unsubscribing and leaving cost the depth of the filter, whatever the number of subscribers.
Wildcards in the first level do not match topics starting with ``$`` (MQTT-4.7.2-1).

What a topic reaches is kept from one sample to the next (``targets``) until a filter that could
change it changes: a paced publisher's sample does not build its subscribers' list again.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final, Generic, TypeVar

from radio.topics import MEMO_TOPIC_MOST, MEMO_TOPICS

S = TypeVar("S", bound=Hashable)

REACHED_MOST: Final = 100_000
"""Subscriber pairs ``targets`` keeps across all topics (some 6 MB): a wildcard filter reaches
every topic a publisher invents, and each would otherwise keep its own copy of its subscribers."""


class _Node(Generic[S]):
    __slots__ = ("children", "hash", "here")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S]] = {}
        self.here: dict[S, int] = {}
        """Subscribers whose filter ends at this node."""
        self.hash: dict[S, int] = {}
        """Subscribers whose filter ends with ``#`` below this node."""


class SubscriptionIndex(Generic[S]):
    """Filters and the subscribers (with their granted QoS) behind each."""

    __slots__ = ("_exact", "_kept", "_reached", "_root", "_wildcards")

    def __init__(self) -> None:
        self._exact: dict[str, dict[S, int]] = {}
        self._root: _Node[S] = _Node()
        self._wildcards = 0
        self._reached: dict[str, tuple[tuple[S, int], ...]] = {}
        """What ``targets`` gave per topic: dropped for a topic when its exact filter changes, and
        for every topic when a wildcard filter does (it may match any)."""
        self._kept = 0
        """Pairs ``_reached`` holds in all (``REACHED_MOST``)."""

    def add(self, topic_filter: str, subscriber: S, qos: int) -> None:
        """Subscribe (or change the granted QoS of an existing subscription)."""
        if "+" not in topic_filter and "#" not in topic_filter:
            self._exact.setdefault(topic_filter, {})[subscriber] = qos
            self._forget(topic_filter)
            return
        self._forget_all()
        node = self._root
        levels = topic_filter.split("/")
        for level in levels[:-1]:
            node = node.children.setdefault(level, _Node())
        last = levels[-1]
        target = node.hash if last == "#" else node.children.setdefault(last, _Node()).here
        if subscriber not in target:
            self._wildcards += 1
        target[subscriber] = qos

    def remove(self, topic_filter: str, subscriber: S) -> None:
        """Unsubscribe; a filter the subscriber does not hold is ignored."""
        if "+" not in topic_filter and "#" not in topic_filter:
            subscribers = self._exact.get(topic_filter)
            if subscribers is not None:
                subscribers.pop(subscriber, None)
                self._forget(topic_filter)
                if not subscribers:
                    del self._exact[topic_filter]
            return
        self._forget_all()
        levels = topic_filter.split("/")
        path = self._path(levels[:-1] if levels[-1] == "#" else levels)
        if path is None:
            return
        target = path[-1].hash if levels[-1] == "#" else path[-1].here
        if target.pop(subscriber, None) is not None:
            self._wildcards -= 1
        names = levels[:-1] if levels[-1] == "#" else levels
        for depth in range(len(path) - 1, 0, -1):  # prune the nodes left empty
            node = path[depth]
            if node.children or node.here or node.hash:
                break
            del path[depth - 1].children[names[depth - 1]]

    def _path(self, levels: list[str]) -> list[_Node[S]] | None:
        path = [self._root]
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return None
            path.append(child)
        return path

    def targets(self, topic: str) -> tuple[tuple[S, int], ...]:
        """Each subscriber a topic reaches, once, with the highest QoS any of its filters was granted.

        A subscriber in several tables (overlapping filters) gets one delivery. The answer is kept
        for the next sample to the topic, within ``MEMO_TOPICS`` topics and ``REACHED_MOST`` pairs
        in all (past either the memo starts again; a topic longer than ``MEMO_TOPIC_MOST`` is never
        kept). It is a tuple: a subscription changed while a sample is being fanned out does not
        change what that sample goes through.
        """
        reached = self._reached.get(topic)
        if reached is not None:
            return reached
        tables = self.match(topic)
        if len(tables) <= 1:
            reached = tuple(tables[0].items()) if tables else ()
        else:
            merged: dict[S, int] = {}  # overlapping filters of one client: one delivery, highest QoS
            for table in tables:
                for subscriber, qos in table.items():
                    if merged.get(subscriber, -1) < qos:
                        merged[subscriber] = qos
            reached = tuple(merged.items())
        if len(topic) <= MEMO_TOPIC_MOST:
            if self._kept + len(reached) > REACHED_MOST or len(self._reached) >= MEMO_TOPICS:
                self._forget_all()
            self._reached[topic] = reached
            self._kept += len(reached)
        return reached

    def _forget(self, topic: str) -> None:
        reached = self._reached.pop(topic, None)
        if reached is not None:
            self._kept -= len(reached)

    def _forget_all(self) -> None:
        self._reached = {}
        self._kept = 0

    def match(self, topic: str) -> list[dict[S, int]]:
        """The subscriber tables of every filter matching a topic (a subscriber may be in several)."""
        found = []
        exact = self._exact.get(topic)
        if exact:
            found.append(exact)
        if self._wildcards:
            levels = topic.split("/")
            root = self._root
            if topic.startswith("$"):
                child = root.children.get(levels[0])
                if child is not None:
                    _walk(child, levels, 1, found)
            else:
                _walk(root, levels, 0, found)
        return found

    def __len__(self) -> int:
        return sum(len(s) for s in self._exact.values()) + self._wildcards


def _walk(node: _Node[S], levels: list[str], depth: int, found: list[dict[S, int]]) -> None:
    if node.hash:
        found.append(node.hash)
    if depth == len(levels):
        if node.here:
            found.append(node.here)
        return
    children = node.children
    if not children:
        return
    child = children.get(levels[depth])
    if child is not None:
        _walk(child, levels, depth + 1, found)
    plus = children.get("+")
    if plus is not None:
        _walk(plus, levels, depth + 1, found)
