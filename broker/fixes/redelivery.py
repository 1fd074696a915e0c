"""Fix: unacknowledged QoS 1 messages are dropped when their subscriber disconnects (amqtt 0.12.1).

Stock ``ProtocolHandler._handle_qos1_message_flow`` removes an outgoing message from the session's
in-flight table in a ``finally:``: when the connection drops before the PUBACK (or the PUBACK takes
more than 5 s), the message is forgotten, and a persistent session that reconnects never gets it
although it was accepted for that session. MQTT-4.4.0-1 asks the server to send it again, with
DUP set, when the session resumes.

Here an outgoing QoS 1 message leaves the in-flight table only when its PUBACK arrives; on
reconnect amqtt's own ``_retry_deliveries`` resends what is left, with DUP. The resends run beside
the connection rather than before it, so a client slow to acknowledge them does not hold up its
own SUBSCRIBE and PUBLISH packets. (A clean session is deleted on its next CONNECT, in-flight
table included, as the specification asks.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Final

from amqtt.mqtt.constants import QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.puback import PubackPacket
from amqtt.session import OUTGOING, IncomingApplicationMessage, OutgoingApplicationMessage

log = logging.getLogger("radio.broker")

PUBACK_WAIT: Final = 5.0
"""How long one delivery task waits for its PUBACK; an unacknowledged message stays in flight."""


class UnackedKeptForRedelivery(BrokerProtocolHandler):
    """A connection handler whose QoS 1 deliveries stay in flight until acknowledged."""

    _resends: set[asyncio.Task[None]]

    async def _handle_qos1_message_flow(
        self, app_message: OutgoingApplicationMessage | IncomingApplicationMessage
    ) -> None:
        if app_message.direction != OUTGOING or self.session is None or app_message.packet_id is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        packet_id = app_message.packet_id
        if app_message.qos != QOS_1 or app_message.puback_packet is not None:
            await super()._handle_qos1_message_flow(app_message)
            return
        assert isinstance(app_message, OutgoingApplicationMessage)  # noqa: S101 - the direction says so
        self.session.inflight_out[packet_id] = app_message
        retry = app_message.publish_packet is not None
        publish_packet = app_message.build_publish_packet(dup=retry)
        waiter: asyncio.Future[PubackPacket] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = waiter
        try:
            await self._send_packet(publish_packet)
            app_message.publish_packet = publish_packet
            app_message.puback_packet = await asyncio.wait_for(waiter, PUBACK_WAIT)
        except TimeoutError:
            return  # not acknowledged yet: it stays in flight, to go again when the session resumes
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this delivery itself is cancelled (the broker is stopping)
            return  # the connection ended before the PUBACK: it stays in flight
        finally:
            self._puback_waiters.pop(packet_id, None)
        self.session.inflight_out.pop(packet_id, None)

    async def _retry_deliveries(self) -> None:
        if self.session is None:
            return
        pending: list[IncomingApplicationMessage | OutgoingApplicationMessage] = list(
            itertools.chain(self.session.inflight_in.values(), self.session.inflight_out.values())
        )
        if pending:
            log.info(
                "resending %d unacknowledged message(s) to client %r", len(pending), self.session.client_id
            )
        self._resends = set()
        for message in pending:
            task = asyncio.ensure_future(self._handle_message_flow(message))
            self._resends.add(task)
            task.add_done_callback(self._resends.discard)
