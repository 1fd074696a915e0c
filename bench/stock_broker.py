"""Stock amqtt, the yardstick: the same version Radio embeds, without Radio's fixes.

    python bench/stock_broker.py                         # anonymous auth only
    python bench/stock_broker.py --radio-plugins CONFIG  # Radio's auth and rights plugins

Prints its two ports and serves until SIGINT/SIGTERM. amqtt refuses every client when no auth
plugin answers, so the first form keeps the cheapest one that lets clients in: what remains is
amqtt's own cost per message. The second runs the stock broker class with Radio's plugins, so
that only the fixes differ (as in the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from amqtt.broker import Broker

from radio.broker.server import EmbeddedBroker
from radio.config import Address
from radio.registry import LiveRegistry

CONFIG = {
    "listeners": {
        "default": {"type": "tcp", "bind": "127.0.0.1:0"},
        "ws": {"type": "ws", "bind": "127.0.0.1:0"},
    },
    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
}


async def main(radio_plugins: str | None) -> None:
    logging.basicConfig(level=logging.CRITICAL)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    if radio_plugins is not None:
        embedded = EmbeddedBroker(
            LiveRegistry(radio_plugins),
            mqtt=Address("127.0.0.1", 0),
            websocket=Address("127.0.0.1", 0),
            broker_class=Broker,
        )
        await embedded.start()
        print(f"mqtt://127.0.0.1:{embedded.mqtt_port} ws://127.0.0.1:{embedded.ws_port}/mqtt", flush=True)
        await stop.wait()
        await embedded.stop()
        return
    broker = Broker(CONFIG)
    await broker.start()
    ports = {name: next(iter(s.instance.sockets)).getsockname()[1] for name, s in broker._servers.items()}
    print(f"mqtt://127.0.0.1:{ports['default']} ws://127.0.0.1:{ports['ws']}/mqtt", flush=True)
    await stop.wait()
    await broker.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--radio-plugins", metavar="CONFIG", help="Radio's plugins, with this configuration")
    asyncio.run(main(parser.parse_args().radio_plugins))
