"""Network names and the MQTT topics they live under.

Every door (HTTP bridge, MQTT broker, clients) names networks and topics through this module, so a
name that is valid in one place is valid everywhere, and the topic layout is defined once.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Final, Self

from radio.errors import InvalidName

ROOT: Final = "networks"
_ROOT_PREFIX: Final = ROOT + "/"
MISSED_TOPIC: Final = "$SYS/radio/missed"
"""Where the embedded broker tells the recorder's session what its queue dropped, per network:
``{"networks": {"NAME": COUNT}}``, sent just before the next sample it delivers (QoS 0)."""
MEMO_TOPICS: Final = 4096
"""Topics a per-topic memo (the gate's places, the router's read keys) keeps before it starts
again: a client publishing to ever new topics costs a lookup each, never memory."""
MEMO_TOPIC_MOST: Final = 256
"""The longest topic (characters) such a memo keeps: ``MEMO_TOPICS`` of them are then about 1 MiB,
where topics of 65,535 bytes (what MQTT allows) would make 256 MiB. A longer topic is worked out
at each sample instead."""
LEVELS_MOST: Final = 200
"""The most levels a topic or filter may have on the embedded broker (Mosquitto's limit too,
``TOPIC_HIERARCHY_LIMIT``). Each level of a wildcard filter is a node of the subscription index,
and each level of a retained topic one of the retained index: a SUBSCRIBE of one 64 KiB filter of
32,000 levels made the broker hold megabytes (``too_deep``)."""


def too_deep(topic: str) -> bool:
    """Whether a topic or filter has more than ``LEVELS_MOST`` levels (only a long one can)."""
    return len(topic) >= LEVELS_MOST and topic.count("/") >= LEVELS_MOST


NAME_RULE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Names of networks, and of keys (MQTT usernames): safe in a topic level, a file and a log line."""


class NetworkName(str):
    """A network name, valid by construction.

    A subclass of ``str`` so that it can stand wherever a name is expected (dict keys, sets, JSON)
    while a plain string taken from a topic can still be looked up against it cheaply.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Self:
        """Refuse anything that could not be one level of a topic, or could be a wildcard."""
        if not isinstance(value, str) or not NAME_RULE.fullmatch(value):
            msg = (
                f"invalid network name {value!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
            raise InvalidName(msg)
        return super().__new__(cls, value)


def network_topic(network: str) -> str:
    """The topic a network's samples are published to."""
    return _ROOT_PREFIX + NetworkName(network)


def network_of_topic(topic: str) -> str | None:
    """The network a concrete topic belongs to, or None if it is outside every network.

    Called for every delivery, so it only slices strings; it does not validate the name (a topic
    under an unknown name simply matches no right).
    """
    if not topic.startswith(_ROOT_PREFIX):
        return None
    name, _, _ = topic[len(_ROOT_PREFIX) :].partition("/")
    return name or None


class Reach(Enum):
    """What a SUBSCRIBE filter reaches when it names no single network."""

    ANY_NETWORK = "any network"
    """The network level is a wildcard: rights are checked per delivered message."""
    OUTSIDE = "outside every network"
    """No network topic can ever match it (``other/x``, ``$SYS/#``, ``networks``)."""


def filter_reach(topic_filter: str) -> str | Reach:
    """The one network a SUBSCRIBE filter names, or what else it reaches.

    ``networks/+/x``, ``networks/#``, ``#`` and ``+/...`` may match several networks
    (Reach.ANY_NETWORK); ``networks/a/#`` names network ``a``.
    """
    root, _, rest = topic_filter.partition("/")
    if root in ("#", "+"):
        return Reach.ANY_NETWORK
    if root != ROOT or not rest:
        return Reach.OUTSIDE
    name, _, _ = rest.partition("/")
    if name in ("#", "+"):
        return Reach.ANY_NETWORK
    return name or Reach.OUTSIDE
