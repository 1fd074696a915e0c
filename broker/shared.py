"""MQTT 5 shared subscriptions: ``$share/GROUP/FILTER``, each sample to one member of the group.

A group is its key's (``SharedSubscriptions``): another key naming the same group has its own.

Each member subscribed with its own key's read right on FILTER (checked at SUBSCRIBE like any
filter); at delivery the group's next connected member that may read the sample's network now gets
it, in turn, so a member whose right was taken away is passed over, never sent what it may not read.
While no member is connected, a QoS 1 or 2 sample goes to the queue of the next member whose session
outlives its connection (one granted QoS 1 or 2), as a sample of its own filters would: the shared
subscription is part of its session (MQTT 5.0, 4.8.2), and the group loses nothing while every
member is away. A QoS 0 sample goes to nobody then, as to any absent client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from radio.broker.index import SubscriptionIndex

if TYPE_CHECKING:
    from radio.broker.message import Message
    from radio.broker.sessions import Session

PREFIX: Final = "$share/"


def split(topic_filter: str) -> tuple[str, str] | None:
    """(group, filter) of a shared subscription's filter; None if it is not one or is malformed."""
    if not topic_filter.startswith(PREFIX):
        return None
    group, sep, inner = topic_filter[len(PREFIX) :].partition("/")
    if not sep or not group or not inner or "+" in group or "#" in group:
        return None
    return group, inner


class Group:
    """The members of one (group, filter), taking turns."""

    __slots__ = ("members", "topic_filter", "turn")

    def __init__(self, topic_filter: str) -> None:
        self.topic_filter = topic_filter
        """As its members subscribed (``$share/GROUP/FILTER``): what their options are kept under."""
        self.members: dict[Session, int] = {}
        self.turn = 0

    def next(self, may_read: Callable[[Session], bool], qos: int) -> tuple[Session, int] | None:
        """The next member, in turn, that may read a sample of ``qos`` (with its granted QoS).

        A connected one; failing that, for a QoS 1 or 2 sample, one away (its session outlived its
        connection) granted QoS 1 or 2, whose queue keeps the sample until it is back.
        """
        members = list(self.members.items())
        for step in range(len(members)):
            session, granted = members[(self.turn + step) % len(members)]
            if session.connection is not None and may_read(session):
                self.turn = (self.turn + step + 1) % len(members)
                return session, granted
        if not qos:
            return None
        for step in range(len(members)):
            session, granted = members[(self.turn + step) % len(members)]
            if granted and session.persistent and may_read(session):
                self.turn = (self.turn + step + 1) % len(members)
                return session, granted
        return None


GroupId = tuple[str | None, str, str]
"""(key id, group, filter): a group is its key's own (None: the anonymous clients')."""


class SharedSubscriptions:
    """Every shared subscription: an index of groups by filter.

    A group name is its key's, as a client id is (``Session.ident``): a key is sold to one buyer,
    and another buyer's key that may read the same network joining ``$share/workers/...`` would
    take a share of the first buyer's samples, which its workers would silently miss. Anonymous
    clients form a scope of their own.
    """

    def __init__(self) -> None:
        self.index: SubscriptionIndex[Group] = SubscriptionIndex()
        self.groups: dict[GroupId, Group] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

    def add(self, group: str, topic_filter: str, session: Session, qos: int) -> None:
        """A member joins its key's group (or changes its QoS)."""
        ident = (session.key_id, group, topic_filter)
        found = self.groups.get(ident)
        if found is None:
            found = self.groups[ident] = Group(f"{PREFIX}{group}/{topic_filter}")
            self.index.add(topic_filter, found, 0)
        found.members[session] = qos

    def remove(self, group: str, topic_filter: str, session: Session) -> None:
        """A member leaves; an empty group goes."""
        ident = (session.key_id, group, topic_filter)
        found = self.groups.get(ident)
        if found is None:
            return
        found.members.pop(session, None)
        if not found.members:
            del self.groups[ident]
            self.index.remove(topic_filter, found)

    def of(self, session: Session, shared_filter: str) -> Group | None:
        """The group a session's ``$share/GROUP/FILTER`` names: its key's."""
        found = split(shared_filter)
        return self.groups.get((session.key_id, *found)) if found is not None else None

    def publish(
        self,
        message: Message,
        may_read: Callable[[Session], bool],
        deliver: Callable[[Session, Message, int, str], None],
    ) -> None:
        """Give the message to one member of each group whose filter matches (and the group's filter)."""
        for table in self.index.match(message.topic):
            for group in table:
                chosen = group.next(may_read, message.qos)
                if chosen is not None:
                    deliver(chosen[0], message, chosen[1], group.topic_filter)
