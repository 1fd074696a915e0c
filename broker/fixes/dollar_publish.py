"""Fix: a PUBLISH to a ``$`` topic leaves a zombie connection (amqtt 0.12.1).

Stock ``Broker._handle_message_delivery`` answers a ``$`` topic by returning False, which ends the
client's message loop while its socket and reader stay open: PINGREQ is still answered, but no
SUBSCRIBE is ever acknowledged and no further PUBLISH is delivered. Any client can do it to
itself by mistake, and a generator that hits it goes silent without noticing.

Here a ``$`` topic goes through the same PUBLISH right as any other: refused (dropped, logged) for
everyone but an admin key, and the connection goes on (MQTT-4.7.2-1 only asks that clients not use
``$`` topics to talk to each other).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

log = logging.getLogger("radio.broker")


class DollarPublishKeepsConnection(Broker):
    """A ``$`` topic is a publish right like any other, not the end of the client's message loop."""

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        message = wait_deliver.result()
        if message is None or not message.topic or not message.topic.startswith("$"):
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        if not await self._topic_filtering(client_session, topic=message.topic, action=Action.PUBLISH):
            log.info(
                "dropped a publish to %r from client %r: not allowed", message.topic, client_session.client_id
            )
            return True
        await self._broadcast_message(client_session, message.topic, message.data)
        if message.publish_packet is not None and message.publish_packet.retain_flag:
            await self.retain_message(client_session, message.topic, message.data, message.qos)
        return True
