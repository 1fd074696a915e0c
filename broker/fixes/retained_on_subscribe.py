"""Fix: retained messages leak to every connecting client (amqtt 0.12.1).

Stock ``Broker._handle_client_session`` ends CONNECT by pushing, for every filter of *every*
client, the matching retained messages to the connecting client at QoS 0, before it subscribes and
without the RECEIVE check: a listener entitled to network A receives network B's last sample as
soon as anyone else subscribed to B, and a resumed session gets duplicates. Stock
``_handle_subscription`` sends retained messages without the RECEIVE check either, so a wildcard
subscription would read every network's last sample.

Here retained messages go out only when the client's own SUBSCRIBE is granted (MQTT-3.3.1-6),
each through the same read check as a live message, at min(granted QoS, stored QoS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.broker import AMQTT_MAGIC_VALUE_RET_SUBSCRIBED, Broker
from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session


class RetainedOnlyOnSubscribe(Broker):
    """Retained messages only for the client's own granted subscriptions, read-checked."""

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        """Stock's CONNECT-time push, and nothing else, calls this now: send nothing."""

    async def _handle_subscription(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        subscribe_waiter: asyncio.Future[Any],
    ) -> None:
        subscriptions = subscribe_waiter.result()
        return_codes = [await self.add_subscription(sub, client_session) for sub in subscriptions.topics]
        await handler.mqtt_acknowledge_subscription(subscriptions.packet_id, return_codes)
        for (topic_filter, _requested), granted in zip(subscriptions.topics, return_codes, strict=True):
            if granted == AMQTT_MAGIC_VALUE_RET_SUBSCRIBED:
                continue
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_SUBSCRIBED,
                client_id=client_session.client_id,
                topic=topic_filter,
                qos=granted,
            )
            await self._send_retained(topic_filter, granted, client_session, handler)

    async def _send_retained(
        self, topic_filter: str, granted_qos: int, session: Session, handler: BrokerProtocolHandler
    ) -> None:
        sends = []
        # A copy: the table may change while the read checks await.
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            qos = granted_qos if retained.qos is None else min(granted_qos, retained.qos)
            sends.append(asyncio.ensure_future(handler.mqtt_publish(topic, retained.data, qos, retain=True)))
        if sends:
            await asyncio.wait(sends)
