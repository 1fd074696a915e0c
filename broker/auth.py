"""The amqtt auth plugin: MQTT username = key name, password = secret, checked against the registry."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from radio.broker import attributes as attrs
from radio.registry import LiveRegistry

log = logging.getLogger(__name__)


class RadioAuthPlugin(BaseAuthPlugin):
    """Accepts a client with a valid key, or with no credentials at all when anonymous access is on.

    Logs one line per decision and never the secret. A last will is a publish that happens later,
    so its topic is checked now, with the same rights as any publish: a client cannot use its will
    to write where it may not.
    """

    @dataclass
    class Config:
        """The registry is shared with the ACL plugin and the watcher that reloads it."""

        registry: LiveRegistry

    async def authenticate(self, *, session: Session) -> bool | None:
        """Decide on a CONNECT; the verdict and the key are recorded on the session."""
        registry = self.config.registry.current
        name, secret = session.username, session.password
        refusal = None
        kind = "invalid"
        if name is None and secret is None:
            if not registry.allow_anonymous:
                refusal, kind = "anonymous access is off", "missing"
        elif name is None or secret is None:
            refusal = "a username and a password (key name and secret) are both needed"
        elif (key := registry.authenticate(name, secret)) is None:
            known = registry.keys.get(name)
            refusal = "unknown key" if known is None else f"wrong secret for key {name!r}"
            if known is not None and known.expired() and known.matches(secret):
                refusal = f"key {name!r} has expired"
        else:
            name = key.name  # the username may be a mere label: the secret named the key

        if refusal is None and session.will_flag:
            access = registry.access(name)
            if not access.may_publish(session.will_topic or ""):
                who = f"key {name!r}" if name is not None else "an anonymous client"
                refusal, kind = f"{who} may not publish its will to {attrs.shown(session.will_topic)}", "will"

        if refusal is not None:
            session.attributes[attrs.REFUSED] = kind
            log.warning("refused %s: %s", attrs.describe(session), refusal)
            return False
        session.attributes[attrs.KEY_NAME] = name
        key = registry.keys[name] if name is not None else None
        session.attributes[attrs.KEY_DIGEST] = key.digest if key is not None else None
        session.attributes[attrs.KEY_ID] = key.id if key is not None else None
        log.info("accepted %s as %s", attrs.describe(session), f"key {name!r}" if name else "anonymous")
        return True
