"""Fix: fan-out breaks under subscription churn and delivers at the wrong QoS (amqtt 0.12.1).

Stock ``Broker._run_broadcast`` iterates the live subscription table across awaits (the RECEIVE
check awaits): a client subscribing or leaving meanwhile raises ``RuntimeError: dictionary changed
size during iteration``, and the message is lost for every remaining subscriber. It also delivers
at the subscription's QoS, even when the message was published at a lower one, instead of
min(publish QoS, granted QoS) (MQTT-3.8.4-6).

Here fan-out walks a snapshot of the table, and each delivery goes out at the lower of the two.
The publish QoS reaches the fan-out through a context variable set by the publisher's own message
loop (each client's loop is its own task, so they cannot mix).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextvars import ContextVar
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OutgoingApplicationMessage, Session

log = logging.getLogger("radio.broker")
_publish_qos: ContextVar[int | None] = ContextVar("radio_publish_qos", default=None)


class FanoutOverSnapshotAtMinQos(Broker):
    """Fan-out that survives churn and honours the publisher's QoS."""

    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        token = _publish_qos.set(message.qos if message is not None else None)
        try:
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        finally:
            _publish_qos.reset(token)

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        broadcast: dict[str, Any] = {"session": session, "topic": topic, "data": data}
        if force_qos is not None:
            broadcast["qos"] = force_qos
        elif (qos := _publish_qos.get()) is not None:
            broadcast["publish_qos"] = qos
        await self._broadcast_queue.put(broadcast)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[OutgoingApplicationMessage]]) -> None:
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        ceiling = broadcast.get("qos", broadcast.get("publish_qos"))
        for topic_filter, subscriptions in list(self._subscriptions.items()):
            if not self._matches(topic, topic_filter):
                continue
            for target_session, granted in list(subscriptions):
                qos = granted if ceiling is None else min(ceiling, granted)
                if not await self._topic_filtering(target_session, topic=topic, action=Action.RECEIVE):
                    continue
                connected = target_session.transitions.state == "connected"
                if not connected and not target_session.clean_session and qos in (QOS_1, QOS_2):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler is not None:
                    running_tasks.append(
                        asyncio.ensure_future(
                            handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                        )
                    )
