"""A listener that never gives up: the article's ``WSClient``, over MQTT.

Use it as a library::

    with Listener(["sample_net"], "ws://127.0.0.1:8080/mqtt") as listener:
        for sample in listener:
            print(sample.network, sample.data)

or as ``radio listen NETWORK...``. On a lost connection it reconnects with exponential backoff and
jitter (starting afresh after every connection that worked) and subscribes again, reporting it
through ``notice``. Given several URLs (a cluster's nodes, ``URL1,URL2,...``), a lost
connection or a failed connect tries the next URL at once, round the list; the backoff starts
only once a whole round failed. A broker that answers "server unavailable" (or any refusal other
than a bad key) is passed over like one that cannot be reached. A subscription brings a topic's
retained sample: after a reconnect, one equal to the last sample seen on that topic is the same
sample again and is skipped. Likewise a sample sent again (DUP) that equals one of the last
``RECENT`` taken: its acknowledgement was lost with a connection (or with a broker that stopped
before keeping it), and the broker sends it again once the session resumes. With a key it
keeps a persistent session (a stable client id, clean session off, QoS 1), so samples published
while it was away arrive when it is back.

With ``since=SEQ`` (and ``http``, the bridge's URL) it first replays the networks' history after
that number, then goes on live, without a duplicate or a hole (docs/history.md): it subscribes
first and holds the live samples back; fetches the history, and again until it reaches a
network's first live sample; then lets through the held samples the history does not already hold
(matched by content, counting repeats). Replayed samples carry their ``seq``, and so do live
ones while the history can be read (``subscribers.numbering``: given ``http``, even without
``since``), so what was printed last is where ``since`` resumes. If the history no longer
reaches back that far, ``notice`` says so, once per network. With ``since`` the session is a
clean one even with a key: the history, not the broker's queue, brings what was missed.

A payload that is not a sample (not UTF-8, not JSON, nested deeper than Python can parse) is
handed to ``on_bad_sample`` and skipped: a retained bad payload must not silence every listener
that subscribes after it. What cannot be cured by retrying (a bad key, a network it may not
read, a broker certificate that cannot be verified) raises ``Refused``.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from radio import mqtt_clients
from radio.errors import RadioError
from radio.subscribers import history
from radio.subscribers.numbering import Numbering, canonical
from radio.timestamps import utc_now
from radio.tls import SYSTEM_TRUST, Trust, verify_failure
from radio.topics import network_of_topic, network_topic
from radio.urls import DEFAULT_MQTT_VERSION, WEBSOCKET_PATH, BrokerURL, MqttVersion, parse_urls

RECENT: Final = 1000
"""Samples remembered (a digest of each) to know one sent again after a reconnect: more than a
broker leaves unacknowledged with a client at once (the embedded broker's ``max_inflight``, 100)."""


@dataclass(frozen=True)
class Sample:
    """One sample as received."""

    network: str
    topic: str
    received_at: str
    data: Any
    seq: int | None = None
    """The platform's number of the sample in its network, for samples replayed from the history."""

    def to_json(self) -> str:
        """One line for ``jq``."""
        numbered = {} if self.seq is None else {"seq": self.seq}
        return json.dumps(
            {
                "network": self.network,
                "topic": self.topic,
                **numbered,
                "received_at": self.received_at,
                "data": self.data,
            }
        )


@dataclass(frozen=True)
class BadSample:
    """A payload that is not a sample: where it came from, and why it was skipped."""

    topic: str
    reason: str
    size: int

    def __str__(self) -> str:
        return f"skipped a payload on {self.topic} ({self.size} bytes): {self.reason}"


def parse_sample(payload: bytes) -> Any:
    """The JSON value of a payload, or ValueError saying why it is none."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        msg = "not UTF-8"
        raise ValueError(msg) from None
    try:
        return json.loads(text, parse_constant=_not_json)
    except RecursionError:
        msg = "nested too deep"
        raise ValueError(msg) from None
    except ValueError:
        msg = "not JSON"
        raise ValueError(msg) from None


def _not_json(name: str) -> Any:
    raise ValueError(name)


class Refused(RadioError):
    """The broker refused something retrying cannot fix: a bad key, or a network not entitled to."""


def backoff_with_jitter(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter, so that many listeners do not reconnect in step."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not secrecy


DEFAULT_BRIDGE = "http://127.0.0.1:5000"
"""Where ``since`` reads the history when no ``http`` is given."""
CATCH_UP = 5.0
"""Seconds a listener joining with ``since`` waits for the history to reach its first live sample."""


class Listener:
    """Subscribes to networks and yields their samples, across reconnects, until stopped."""

    def __init__(
        self,
        networks: Sequence[str],
        url: str | BrokerURL | Sequence[BrokerURL] = "ws://127.0.0.1:8080/mqtt",
        secret: str | None = None,
        *,
        notice: Callable[[str], None] = lambda _text: None,
        on_bad_sample: Callable[[BadSample], None] | None = None,
        since: int | None = None,
        http: str | None = None,
        trust: Trust = SYSTEM_TRUST,
        version: MqttVersion = DEFAULT_MQTT_VERSION,
        check_rights: Callable[[], None] | None = None,
    ) -> None:
        self.networks = [str(n) for n in networks]
        self._check_rights = check_rights
        """Asked at every connection before subscribing; a ``RadioError`` it raises ends the listener.
        What Mosquitto would not say after a reconnect: it grants a SUBSCRIBE the key may no longer
        read, and delivers nothing to it."""
        self._cursor = mqtt_clients.broker_cursor(parse_urls(url) if isinstance(url, str) else url)
        self.notice = notice
        self.on_bad_sample = on_bad_sample or (lambda bad: notice(str(bad)))
        """Called on the network thread with every payload skipped; by default, a ``notice``."""
        self._last: dict[str, bytes] = {}
        """The last payload per topic, to know a retained sample seen before a reconnect."""
        self._recent: deque[tuple[str, bytes]] = deque()
        self._recent_count: Counter[tuple[str, bytes]] = Counter()
        """The last ``RECENT`` samples taken, by topic and payload digest: one sent again is known."""
        self._seen_since_subscribe: set[str] = set()
        self._established = False
        self._filters = {network_topic(n) + "/#": n for n in self.networks}
        self._samples: queue.Queue[Sample | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        """Set while the broker has granted every subscription (cleared while reconnecting)."""
        self._thread: threading.Thread | None = None
        self._secret = secret
        self._since = since
        self._http = http or DEFAULT_BRIDGE
        self._numbering: Numbering | None = None
        self._unnumbered: str | None = None
        """Why live samples go without ``seq``: said once subscribed, not before a refusal."""
        """Set once the history can be read: live samples then go out with their ``seq``."""
        self._number_live = http is not None or since is not None
        self._heads: dict[str, history.HistoryPage] = {}
        self._replayed: dict[str, int] = {}
        """The last number the replay handed over, per network: live numbering goes on from it."""
        self._trust = trust
        self._held: list[Sample] | None = [] if since is not None else None
        """Live samples held back while the history is replayed; None once it is done."""
        self._held_lock = threading.Lock()
        self._live: set[str] = set()
        """Networks whose seam is crossed while others' samples are still held back."""
        self._skipped: set[tuple[str, int]] = set()
        """History samples skipped as not strict JSON: each is said once."""
        self._arrived = threading.Event()
        """Set when a live sample is held back: the replay looks for the seam again."""
        self._qos = 1 if secret is not None else 0
        # With since, the history is the catch-up: a session's queue would hand over, unnumbered,
        # samples the replay delivers too. So it starts clean.
        self._persistent = secret is not None and since is None
        self._client = self._make_client(secret, trust, version)

    def _make_client(self, secret: str | None, trust: Trust, version: MqttVersion) -> mqtt.Client:
        # A stable id per key and set of networks: the broker keeps the session between runs.
        digest = hashlib.sha256(f"{secret}|{sorted(self.networks)}".encode()).hexdigest()[:16]
        client_id = f"radio-listen-{digest}" if self._persistent else f"radio-listen-{uuid.uuid4().hex[:16]}"
        client = mqtt_clients.make_client(
            self.url,
            client_id,
            credentials=mqtt_clients.key_credentials(secret),
            persistent=self._persistent,
            version=version,
            trust=trust,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    @property
    def urls(self) -> tuple[BrokerURL, ...]:
        """Tried in turn (one transport: paho fixes it when the client is made)."""
        return self._cursor.items

    @property
    def url(self) -> BrokerURL:
        """The broker connected to (or tried next)."""
        return self._cursor.current

    def start(self) -> Self:
        """Connect and subscribe in the background."""
        self._thread = threading.Thread(target=self._run, name="radio-listener", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Disconnect and end iteration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._numbering is not None:
            self._numbering.stop()
        self._samples.put(None)

    def __iter__(self) -> Iterator[Sample]:
        while True:
            item = self._samples.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def run(self, callback: Callable[[Sample], None]) -> None:
        """Call ``callback`` with every sample until stopped."""
        for sample in self:
            callback(sample)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _fail(self, error: BaseException) -> None:
        self._stop.set()
        self._samples.put(error)

    def _run(self) -> None:
        if self._since is not None:
            self._start_replay(self._since)
        elif self._number_live and not self._start_numbering():
            return
        attempt = 0  # backoffs since the last connection that worked
        while not self._stop.is_set():
            url = self.url
            try:
                mqtt_clients.connect(self._client, url.host, url.port, persistent=self._persistent)
            except OSError as exc:
                refusal = verify_failure(exc, str(url))
                if refusal is not None:
                    self._fail(Refused(refusal))  # retrying cannot make a certificate trusted
                    return
                attempt = self._pause(_unreachable(url, exc), "retrying", attempt, worked=False)
                continue
            self._established = False
            while not self._stop.is_set():
                if self._client.loop(timeout=0.5) != mqtt.MQTT_ERR_SUCCESS:
                    break
            else:
                self._disconnect()
                return
            self.subscribed.clear()
            if self._stop.is_set():
                return
            # A connection that worked was a success: the next outage starts from the shortest wait.
            if self._established:
                attempt = 0
            attempt = self._pause(
                f"connection to {url} lost", "reconnecting", attempt, worked=self._established
            )

    def _pause(self, why: str, doing: str, attempt: int, *, worked: bool) -> int:
        """Go on to the next URL: at once, unless a whole round failed (then back off); the attempt.

        With one URL there is no other to try: even after a connection that worked, the retry waits
        a jittered moment, so that many listeners of a restarted broker do not return in step.
        """
        round_failed = self._cursor.move_on(worked=worked)
        if not round_failed and len(self._cursor) > 1:
            self.notice(f"{why}; trying {self.url}")
            return attempt
        delay = backoff_with_jitter(attempt)
        self.notice(f"{why}; {doing} in {delay:.1f} s")
        self._stop.wait(delay)
        return attempt + 1

    def _disconnect(self) -> None:
        """Say goodbye properly, so the broker marks the session offline and keeps its messages."""
        self._client.disconnect()
        for _ in range(20):  # the DISCONNECT goes out on the next loop turns, then the socket closes
            if self._client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            why = f"the broker at {self.url} refused the connection: {mqtt_clients.describe(reason, client)}"
            if reason.value in mqtt_clients.FINAL_REFUSALS:
                self._fail(Refused(f"{why} (is the key right?)"))
            else:  # server unavailable and the like: another broker, or this one later, may take it
                self.notice(why)
            client.disconnect()
            return
        self._established = True
        if self._check_rights is not None:
            try:
                self._check_rights()
            except RadioError as exc:
                self._fail(Refused(str(exc)))
                client.disconnect()
                return
        self._seen_since_subscribe = set()
        client.subscribe([(f, self._qos) for f in self._filters])

    def _on_subscribe(
        self, client: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        refused = [n for n, code in zip(self._filters.values(), codes, strict=False) if code.is_failure]
        if refused:
            self._fail(
                Refused(f"not entitled to read network {refused[0]!r} (use a key that may subscribe to it)")
            )
            client.disconnect()
        else:
            self.subscribed.set()
            self.notice(f"listening to {', '.join(self.networks)} on {self.url}")
            if self._unnumbered is not None:
                self.notice(self._unnumbered)
                self._unnumbered = None

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
        first = topic not in self._seen_since_subscribe
        self._seen_since_subscribe.add(topic)
        if first and message.retain and self._last.get(topic) == payload:
            return  # the retained sample a resubscription brings back: printed already
        taken = (topic, hashlib.blake2b(payload, digest_size=16).digest())
        if message.dup and self._recent_count[taken]:
            return  # sent again after a reconnect: its acknowledgement was lost, not the sample
        self._recent.append(taken)
        self._recent_count[taken] += 1
        if len(self._recent) > RECENT:
            old = self._recent.popleft()
            self._recent_count[old] -= 1
            if not self._recent_count[old]:
                del self._recent_count[old]
        self._last[topic] = payload
        try:
            data = parse_sample(payload)
        except ValueError as exc:
            try:
                self.on_bad_sample(BadSample(topic, str(exc), len(payload)))
            except Exception as failure:  # noqa: BLE001 - the caller's callback must not end the listener
                self.notice(f"on_bad_sample raised {failure!r}")
            return
        network = network_of_topic(message.topic) or ""
        received = utc_now()
        sample = Sample(network, message.topic, received, data)
        with self._held_lock:
            if self._held is not None and network not in self._live:
                if not message.retain:  # a retained one was published before: the history has it
                    self._held.append(sample)
                    self._arrived.set()
                return
        self._pass_live(sample, retained=message.retain)

    def _pass_live(self, sample: Sample, *, retained: bool = False) -> None:
        """A live sample goes out: through the numbering while the history can be read."""
        if self._numbering is not None:
            self._numbering.add(sample, retained=retained)
        else:
            self._samples.put(sample)

    def _read_heads(self) -> bool:
        """Where each network's history ends; False if it cannot be read (or refused: then failed)."""
        try:
            for network in self.networks:
                self._heads[network] = self._fetch(network, limit=1)
        except history.HistoryRefused as exc:
            if self._since is not None:  # the replay asked for cannot be given
                self._fail(Refused(str(exc)))
            else:  # the broker decides what is read live; only the numbers are missing
                self._unnumbered = f"no history ({exc}): samples are printed without seq"
            return False
        except history.HistoryUnavailable as exc:
            if self._since is not None:
                self.notice(f"no history ({exc}): listening live only")
            else:
                self._unnumbered = f"no history ({exc}): samples are printed without seq"
            return False
        self._numbering = Numbering(self._fetch, self._samples.put, self.notice)
        return True

    def _fetch(
        self, network: str, *, after: int | None = None, limit: int = history.PAGE
    ) -> history.HistoryPage:
        return history.fetch(self._http, network, self._secret, after=after, limit=limit, trust=self._trust)

    def _start_numbering(self) -> bool:
        """Live samples numbered from the history's end on; False if the history refused this client."""
        if self._read_heads():
            assert self._numbering is not None  # noqa: S101 - made by _read_heads
            for network, head in self._heads.items():
                self._numbering.follow(network, head)
        return not self._stop.is_set()

    def _start_replay(self, since: int) -> None:
        """Note where each history ends before subscribing, then replay once subscribed."""
        if not self._read_heads():
            if not self._stop.is_set():
                self._release({}, None)
            return
        heads = {network: page.last for network, page in self._heads.items()}
        threading.Thread(target=self._replay, args=(since, heads), name="radio-replay", daemon=True).start()

    def _replay(self, since: int, heads: dict[str, int]) -> None:
        """The history after ``since``; then each network goes live at its first live sample.

        The seam between history and live is the first live sample held back: once the history
        holds it, everything published before it is in the history too (the recorder numbers
        samples in the order the broker routes them), and the held samples the history does not
        hold follow. A sample published just before the subscription took effect reaches this
        listener only through the history, and the recorder may not have numbered it at the
        first read: waiting for the first live sample closes that hole. Until a network has a
        live sample, there is nothing new to show for it anyway.
        """
        while not self.subscribed.wait(0.2):
            if self._stop.is_set():
                return
        recent: dict[tuple[str, str], int] = {}
        try:
            after = {n: self._replay_from(n, since, heads[n], recent, first=True)[0] for n in self.networks}
            waiting = list(self.networks)
            while waiting:
                for network in list(waiting):
                    with self._held_lock:
                        first = next((s for s in self._held or [] if s.network == network), None)
                    if first is not None:
                        self._catch_up(network, first, after[network], heads[network], recent)
                        self._release(recent, network)
                        waiting.remove(network)
                if waiting and self._wait_for_live():
                    return
        except history.HistoryRefused as exc:
            self._fail(Refused(str(exc)))
            return
        except history.HistoryUnavailable as exc:
            self.notice(f"history interrupted ({exc}): listening live only")
        self._release(recent, None)

    def _wait_for_live(self) -> bool:
        """Until a live sample is held back (or a while); True if the listener is stopping."""
        self._arrived.wait(0.2)
        self._arrived.clear()
        return self._stop.is_set()

    def _replay_from(
        self,
        network: str,
        after: int,
        head: int,
        recent: dict[tuple[str, str], int],
        *,
        first: bool = False,
        until: tuple[str, str] | None = None,
    ) -> tuple[int, bool]:
        """Hand over the history after ``after``, stopping short of ``until`` (a sample held back).

        Returns the last number handed over (or ``after``), and whether ``until`` was reached:
        from it on, the held live samples are the same samples, and they follow.
        """
        for sample in self._history_of(network, after, first=first):
            if sample.seq is None:
                continue
            seen = (network, canonical(sample.data))
            if sample.seq > head and seen == until and not recent.get(seen):
                return after, True
            self._samples.put(sample)
            after = self._replayed[network] = sample.seq
            if sample.seq > head:  # recorded after the subscription was asked for: may be held too
                recent[seen] = recent.get(seen, 0) + 1
        return after, False

    def _catch_up(
        self, network: str, first: Sample, after: int, head: int, recent: dict[tuple[str, str], int]
    ) -> None:
        """Read the history of ``network`` on until it reaches ``first``, its first live sample."""
        wanted = (network, canonical(first.data))
        deadline = time.monotonic() + CATCH_UP
        while not recent.get(wanted, 0):
            after, reached = self._replay_from(network, after, head, recent, until=wanted)
            if reached or self._stop.wait(0.05):
                return
            if time.monotonic() > deadline:
                self.notice(
                    f"the history of {network} is over {CATCH_UP:g} s behind: going live, some samples "
                    "published as this listener joined may be missing"
                )
                return

    def _history_of(self, network: str, since: int, *, first: bool = True) -> Iterator[Sample]:
        """The history after ``since``, page by page; a hole in the numbering is one notice."""
        after = since
        expected = since + 1
        while True:
            page = history.fetch(self._http, network, self._secret, after=after, trust=self._trust)
            if first:
                first = False
                kept_from = page.first if page.first is not None else page.last + 1
                if page.last < since:
                    self.notice(
                        f"the history of {network} ends at {page.last}, before {since}: nothing to "
                        "replay (a number not reached yet, or a history file that started again)"
                    )
                elif kept_from > since + 1:
                    self.notice(
                        f"the history of {network} no longer reaches back to {since + 1}: "
                        f"samples {since + 1} to {kept_from - 1} are gone, replaying from {kept_from}"
                    )
                    expected = kept_from
            for item in page.samples:
                seq = int(item["seq"])
                if seq > expected:
                    self.notice(
                        f"the history of {network} misses samples {expected} to {seq - 1}: the recorder "
                        "never received them (its session overflowed, or it was away too long)"
                    )
                expected = seq + 1
                after = seq
                if "invalid" in item:
                    if (network, seq) not in self._skipped:  # a later read may pass it again
                        self._skipped.add((network, seq))
                        self.notice(f"skipped sample {seq} of {network}: {item['invalid']}")
                    continue
                topic = str(item.get("topic") or network_topic(network))
                yield Sample(network, topic, str(item["received_at"]), item["data"], seq)
            more = page.more if page.more is not None else len(page.samples) >= history.PAGE
            if not page.samples or not more or after >= page.last:
                return

    def _release(self, recent: dict[tuple[str, str], int], network: str | None) -> None:
        """Let a network's held live samples through, but those the replay delivered; then go live.

        ``network`` None: every network's, and the hold ends.
        """
        with self._held_lock:
            if self._numbering is not None:  # numbered on from the last sample the replay handed over
                for going_live in [network] if network is not None else set(self.networks) - self._live:
                    head = self._heads[going_live]
                    self._numbering.follow(going_live, head, self._replayed.get(going_live, head.last))
            held, kept = self._held or [], []
            for sample in held:
                if network is not None and sample.network != network:
                    kept.append(sample)
                    continue
                seen = (sample.network, canonical(sample.data))
                if recent.get(seen, 0) > 0:
                    recent[seen] -= 1
                    continue
                self._pass_live(sample)
            if network is None:
                self._held = None
            else:
                self._held = kept
                self._live.add(network)


def _unreachable(url: BrokerURL, exc: OSError) -> str:
    """Why a connect failed, in one line; a WebSocket not upgraded at another path says where MQTT is."""
    why = f"cannot reach {url} ({exc.strerror or exc})"
    if isinstance(exc, mqtt.WebsocketConnectionError) and url.path != WEBSOCKET_PATH:
        why += f": Radio's brokers serve MQTT over WebSocket at {WEBSOCKET_PATH}, not {url.path}"
    return why
