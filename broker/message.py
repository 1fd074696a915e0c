"""One accepted sample on its way to subscribers, encoded once for all of them."""

from __future__ import annotations

from typing import Any

from radio.topics import network_of_topic
from radio.wire import remaining_length, string
from radio.wire.properties import encode_varint


class Message:
    """A PUBLISH the broker accepted: topic, payload, the QoS it came with, and its bytes.

    Fan-out writes the same bytes to every subscriber at QoS 0; at QoS 1 and 2 only the packet id
    differs, so the parts around it are built once and joined per delivery.
    """

    __slots__ = (
        "_framed5",
        "_heads",
        "_network",
        "_plain",
        "_plain5",
        "expires",
        "fields",
        "origin",
        "payload",
        "qos",
        "retain",
        "row",
        "topic",
    )

    def __init__(  # noqa: PLR0917 - a message's parts, in the order of a PUBLISH
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        fields: bytes = b"",
        expires: float | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.fields = fields
        """The MQTT 5 properties its subscribers get as they came (user properties, content type...)."""
        self.expires = expires
        """When it expires (``time.monotonic``), if its publisher gave a message expiry interval."""
        self.origin: Any = None
        """The session that published it (MQTT 5's no-local option leaves it out)."""
        self._plain5: bytes | None = None
        self._framed5: tuple[bytes, bytes] | None = None
        self.row = 0
        """The store's id for this message, once it is kept for a persistent session."""
        self._plain: bytes | None = None
        self._heads: dict[int, bytes] | None = None
        """What comes before the packet id, per first byte (QoS, DUP, retain): built once, so a
        delivery adds only its id and the payload."""
        self._network: str | None = None

    @property
    def network(self) -> str:
        """The network the sample belongs to ("" outside every network), worked out once."""
        network = self._network
        if network is None:
            network = self._network = network_of_topic(self.topic) or ""
        return network

    @property
    def size(self) -> int:
        """What it costs to keep: payload and topic bytes."""
        return len(self.payload) + len(self.topic)

    def packet(self, qos: int, pid: int = 0, *, retain: bool = False, dup: bool = False) -> bytes:
        """The PUBLISH that delivers it at ``qos`` (with packet id ``pid`` at QoS 1 and 2)."""
        if not qos:
            if retain:
                return self._build(0x31, b"")
            plain = self._plain
            if plain is None:
                plain = self._plain = self._build(0x30, b"")
            return plain
        first = 0x30 | qos << 1 | dup << 3 | retain
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        head = heads.get(first)
        if head is None:
            topic = string(self.topic)
            length = remaining_length(len(topic) + 2 + len(self.payload))
            head = heads[first] = bytes((first,)) + length + topic
        return b"".join((head, pid.to_bytes(2, "big"), self.payload))

    def packet5(self, qos: int, pid: int = 0, *, retain: bool = False, dup: bool = False) -> bytes:
        """The same PUBLISH for an MQTT 5 client: with its properties (none per subscriber)."""
        if not qos:
            if retain:
                return self.build5(0x31, b"", self.topic, self.fields)
            plain = self._plain5
            if plain is None:
                plain = self._plain5 = self.build5(0x30, b"", self.topic, self.fields)
            return plain
        framed = self._framed5
        if framed is None:
            topic = string(self.topic)
            tail = encode_varint(len(self.fields)) + self.fields + self.payload
            framed = self._framed5 = (remaining_length(len(topic) + 2 + len(tail)) + topic, tail)
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        return b"".join((bytes((first,)), framed[0], pid.to_bytes(2, "big"), framed[1]))

    def build5(self, first: int, pid: bytes, topic: str, fields: bytes) -> bytes:
        """An MQTT 5 PUBLISH of it with ``fields`` as its properties, under ``topic`` ("": aliased)."""
        name = string(topic)
        head = encode_varint(len(fields))
        return b"".join(
            (
                bytes((first,)),
                remaining_length(len(name) + len(pid) + len(head) + len(fields) + len(self.payload)),
                name,
                pid,
                head,
                fields,
                self.payload,
            )
        )

    def _build(self, first: int, pid: bytes) -> bytes:
        topic = string(self.topic)
        return b"".join(
            (
                bytes((first,)),
                remaining_length(len(topic) + len(pid) + len(self.payload)),
                topic,
                pid,
                self.payload,
            )
        )
