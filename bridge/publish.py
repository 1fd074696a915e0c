"""``POST /publish``: the article's contract, to the letter, then forwarded to the broker.

The checks run in the article's order and answer with its status codes and error strings, which
legacy generators depend on (design section 4):

    1  no API-KEY header                 400 API-KEY missing in headers
    2  key not valid                     400 API-KEY not valid
    3  body is not JSON                  400 POST data is not JSON
    4  no network key                    400 *network* key missing
    5  key may not publish there         403 You cannot broadcast to this channel
    6  no data key                       400 *data* key missing
    7  data is not a JSON object         400 Can only broadcast json data
    8  published, broker acknowledged    200 {"message": "OK"}

Beyond the article: a body over the network's ``max_payload`` is 413 (a body too large for any
network is refused before it is read), and a broker that is down or slow is 503. "Not JSON"
includes what JSON cannot carry to every reader: numbers no float holds (``1e999``), integers over
4,300 digits, nesting too deep to parse, and lone surrogates (docs/http-door.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import KW_ONLY, dataclass
from typing import Any, Final, NoReturn

from flask import Blueprint, Request, Response, request

from radio import samples
from radio.admission import Admission, Admitted
from radio.bridge import access, metrics
from radio.bridge.asgi import DEFERRABLE, DEFERRED, INLINE, TO_A_THREAD, Answer
from radio.bridge.errors import APIError
from radio.bridge.publisher import BrokerUnavailable, Publisher
from radio.bridge.reading import presented_secret
from radio.bridge.state import body_limit, current_state
from radio.keys import Key
from radio.registry import Registry
from radio.topics import network_topic

bp = Blueprint("publish", __name__)

OK: Final = b'{"message":"OK"}\n'
"""The article's answer to an accepted sample, byte for byte what ``jsonify(message="OK")`` gives:
made once, not encoded again for every sample."""


def _refuse(status: int, message: str, reason: str) -> NoReturn:
    metrics.PUBLISHES.labels(outcome=reason).inc()
    raise APIError(status, message, reason)


def _presented_key(req: Request, registry: Registry) -> Key:
    """Checks 1 and 2: an API-KEY header, naming a valid key."""
    secret = presented_secret(req)
    if secret is None:
        _refuse(400, "API-KEY missing in headers", "missing_key")
    key = registry.key_for_secret(secret)
    if key is None:
        _refuse(400, "API-KEY not valid", "invalid_key")
    return key


def _read_body(req: Request, registry: Registry) -> bytes:
    limit = body_limit(registry)
    length = req.content_length
    if length is not None and length > limit:
        _refuse(413, f"request body too large: at most {limit} bytes", "too_large")
    # A declared length is read straight from the server's input, as WSGI allows; werkzeug's
    # guarded stream (which costs more than the rest of the checks) only for a chunked body.
    body = req.environ["wsgi.input"].read(length) if length is not None else req.stream.read(limit + 1)
    if len(body) > limit:
        _refuse(413, f"request body too large: at most {limit} bytes", "too_large")
    return body


def _parse(body: bytes) -> Any:
    """The body as JSON, read as strictly as every sample is (``radio/samples.py``), or check 3."""
    try:
        return samples.parse(body)
    except samples.NotJSON:
        _refuse(400, "POST data is not JSON", "not_json")


def _serialize(data: dict[str, Any]) -> bytes:
    """The sample as listeners get it: the article's ``json.dumps(body["data"])``, always strict JSON."""
    try:
        return samples.encode(data)
    except samples.NotJSON:
        _refuse(400, "POST data is not JSON", "not_json")


@bp.post("/publish", provide_automatic_options=False)  # OPTIONS is 405, like every other method
def publish() -> tuple[Response, int]:
    """Check, forward at QoS 1, and answer 200 only once the broker acknowledged the sample."""
    started = time.perf_counter()
    # The request and the state once, rather than through their context proxies at every use.
    req: Request = request._get_current_object()  # type: ignore[attr-defined]
    state = current_state()
    registry = state.fresh_registry()

    key = _presented_key(req, registry)
    if (key.terms.rate is not None or key.terms.quota is not None) and req.environ.get(INLINE):
        # Its rate and quota live in files the bridge's workers and the broker share: checking
        # them can wait for another process's lock, which must not stall the event loop.
        req.environ[TO_A_THREAD] = True
        return Response(status=204), 204  # not sent: the request runs again, in a thread

    body = _parse(_read_body(req, registry))
    if not isinstance(body, dict) or "network" not in body:
        _refuse(400, "*network* key missing", "missing_network")
    network = body["network"]
    settings = registry.networks.get(network) if isinstance(network, str) else None
    topic = network_topic(network) if settings is not None else ""
    if settings is None or not registry.access(key.name).may_publish(topic):
        access.refused_rights(state.gate, key)  # access: count the refusal against the key (bridge/access.py)
        _refuse(403, "You cannot broadcast to this channel", "forbidden")
    if "data" not in body:
        _refuse(400, "*data* key missing", "missing_data")
    data = body["data"]
    if not isinstance(data, dict):
        _refuse(400, "Can only broadcast json data", "not_object")

    payload = _serialize(data)
    # The admission gate every sample passes, on either door (bridge/access.py): size, schema,
    # rate, quota; an admitted sample holds its unit of quota and is metered.
    admitted = access.admit(state.gate, registry, key, topic, payload, data=data)

    sample = _Sample(
        state.publisher,
        topic,
        payload,
        retain=settings.retain,
        gate=state.gate,
        admitted=admitted,
        started=started,
    )
    if req.environ.get(DEFERRABLE):  # radio bridge: the PUBACK is awaited on the event loop
        req.environ[DEFERRED] = sample.forward
    else:
        sample.publish()
    return Response(OK, mimetype="application/json"), 200


@dataclass(slots=True)  # not frozen: a frozen one's __init__ costs 3x as much (1.3 against 0.4 us)
class _Sample:
    """A checked sample on its way to the broker; once it confirms, counted by ``count_confirmed``."""

    publisher: Publisher
    topic: str
    payload: bytes
    _: KW_ONLY
    retain: bool
    gate: Admission
    admitted: Admitted
    started: float

    @property
    def key_name(self) -> str:
        """The name of the key that published it."""
        return self.admitted.key.name if self.admitted.key is not None else ""

    def publish(self) -> None:
        """Publish and wait for the PUBACK in this thread (any WSGI server), else refuse 503."""
        try:
            self.publisher.publish(self.topic, self.payload, retain=self.retain, receipt=self)
        except BrokerUnavailable as exc:
            self.gate.release(self.admitted)
            _refuse(503, str(exc), "broker_unavailable")

    async def forward(self, answer: Answer) -> Answer:
        """The view's last step, on the event loop: its 200 once the broker has the sample, else 503."""
        try:
            await self.publisher.publish_async(self.topic, self.payload, self.retain, receipt=self)
        except BrokerUnavailable as exc:
            self.gate.release(self.admitted)
            metrics.PUBLISHES.labels(outcome="broker_unavailable").inc()
            body = json.dumps({"error": str(exc)}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            return 503, headers, body
        return answer


def count_confirmed(confirmed: list[Any]) -> None:
    """The publisher's ``on_confirmed``: what the broker confirmed, counted once per read of PUBACKs.

    It runs before any of those samples' requests is answered, so a 200 is in ``/metrics`` by the
    time its client has it (its usage was recorded when the gate admitted it). A read's samples
    are counted together: one increment of each counter per key and network, not one per sample
    (each takes a lock and writes to the worker's memory-mapped metrics file).
    """
    now = time.perf_counter()
    for sample in confirmed:
        metrics.PUBACK_SECONDS.observe(now - sample.started)
    metrics.ACCEPTED.inc(len(confirmed))
    access.count_accepted([(s.key_name, s.admitted.network, len(s.payload)) for s in confirmed])
