"""One accepted sample on its way to subscribers, encoded once for all of them."""

from __future__ import annotations

from radio.broker.codec import encode_topic, remaining_length
from radio.topics import network_of_topic


class Message:
    """A PUBLISH the broker accepted: topic, payload, the QoS it came with, and its bytes.

    Fan-out writes the same bytes to every subscriber at QoS 0; at QoS 1 and 2 only the packet id
    differs, so the parts around it are built once and joined per delivery.
    """

    __slots__ = ("_heads", "_network", "_plain", "payload", "qos", "retain", "row", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
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
        first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
        heads = self._heads
        if heads is None:
            heads = self._heads = {}
        head = heads.get(first)
        if head is None:
            topic = encode_topic(self.topic)
            length = remaining_length(len(topic) + 2 + len(self.payload))
            head = heads[first] = bytes((first,)) + length + topic
        return b"".join((head, pid.to_bytes(2, "big"), self.payload))

    def _build(self, first: int, pid: bytes) -> bytes:
        topic = encode_topic(self.topic)
        return b"".join(
            (
                bytes((first,)),
                remaining_length(len(topic) + len(pid) + len(self.payload)),
                topic,
                pid,
                self.payload,
            )
        )
