"""Retained samples in a tree by topic level, so that a SUBSCRIBE costs what it matches.

A new subscription brings the retained samples its filter matches. Walking every retained topic
for each filter would make a SUBSCRIBE cost what is retained, and a client re-subscribing in a
loop would stall the event loop for every publisher. Here a filter walks only the branches it
can match: one child per plain level, every child for ``+``, the whole subtree below ``#``.
Wildcards in the first level do not match topics starting with ``$`` (MQTT-4.7.2-1).

Each network's count of retained topics is kept as they come and go, for its ``max_retained``.
"""

from __future__ import annotations

from collections.abc import Iterator

from radio.broker.message import Message
from radio.topics import network_of_topic


class _Level:
    __slots__ = ("children", "message")

    def __init__(self) -> None:
        self.children: dict[str, _Level] = {}
        self.message: Message | None = None


class RetainedIndex:
    """Topic -> retained sample, with matching by filter and a count per network."""

    __slots__ = ("_by_topic", "_per_network", "_root")

    def __init__(self) -> None:
        self._root = _Level()
        self._by_topic: dict[str, Message] = {}
        self._per_network: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_topic)

    def __contains__(self, topic: object) -> bool:
        return topic in self._by_topic

    def get(self, topic: str) -> Message | None:
        """The sample retained on a topic, if any."""
        return self._by_topic.get(topic)

    def items(self) -> Iterator[tuple[str, Message]]:
        """Every retained (topic, sample)."""
        return iter(list(self._by_topic.items()))

    def count(self, network: str) -> int:
        """How many topics of a network hold a retained sample."""
        return self._per_network.get(network, 0)

    def put(self, topic: str, message: Message) -> None:
        """Retain a sample on a topic, replacing what was there."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Level()
            node = child
        node.message = message
        existed = topic in self._by_topic
        self._by_topic[topic] = message
        if existed:
            return
        network = network_of_topic(topic)
        if network is not None:
            self._per_network[network] = self._per_network.get(network, 0) + 1

    def pop(self, topic: str) -> Message | None:
        """Clear a topic's retained sample; what it was, or None."""
        message = self._by_topic.pop(topic, None)
        if message is None:
            return None
        levels = topic.split("/")
        path = [self._root]
        for level in levels:
            path.append(path[-1].children[level])
        path[-1].message = None
        for depth in range(len(levels), 0, -1):  # prune the levels left empty
            node = path[depth]
            if node.children or node.message is not None:
                break
            del path[depth - 1].children[levels[depth - 1]]
        network = network_of_topic(topic)
        if network is not None:
            left = self._per_network[network] - 1
            if left:
                self._per_network[network] = left
            else:
                del self._per_network[network]
        return message

    def match(self, topic_filter: str) -> list[Message]:
        """The retained samples a filter matches, visiting only the branches it can match."""
        found: list[Message] = []
        levels = topic_filter.split("/")
        root = self._root
        if levels[0] in ("+", "#"):  # a leading wildcard skips the $ topics
            for name, child in root.children.items():
                if name.startswith("$"):
                    continue
                if levels[0] == "+":
                    _walk(child, levels, 1, found)
                else:
                    _everything(child, found)
            return found
        top = root.children.get(levels[0])
        if top is not None:
            _walk(top, levels, 1, found)
        return found


def _walk(node: _Level, levels: list[str], depth: int, found: list[Message]) -> None:
    """``node`` matched ``levels[:depth]``; collect what matches the rest."""
    if depth == len(levels):
        if node.message is not None:
            found.append(node.message)
        return
    level = levels[depth]
    if level == "#":
        _everything(node, found)  # "a/#" matches "a" itself too
        return
    if level == "+":
        for child in node.children.values():
            _walk(child, levels, depth + 1, found)
        return
    below = node.children.get(level)
    if below is not None:
        _walk(below, levels, depth + 1, found)


def _everything(node: _Level, found: list[Message]) -> None:
    """Every sample at or below a level (iteratively: a topic may be deep)."""
    stack = [node]
    while stack:
        current = stack.pop()
        if current.message is not None:
            found.append(current.message)
        stack.extend(current.children.values())
