"""TLS for every door: the servers' certificate checked before serving, and the clients' trust.

Servers (the embedded broker's mqtts and wss listeners, the bridge's HTTPS) call
``server_context``: it reads ``[tls] cert`` and ``key`` and refuses, as one line naming the file,
what would otherwise fail later and obscurely at every handshake: a missing or unreadable file,
something that is not PEM, a key that is not the certificate's, a certificate out of date, a
private key that others on the machine may read.

Clients (listeners, generators, the bridge's broker link) call ``client_context``: the system's
trust store by default, or the one CA file given with ``--ca`` (a development CA from ``radio
certs dev``). Host names are checked. ``verify_failure`` turns a refused handshake into the one
line a client prints.

A command run in a radio folder whose configuration has ``[tls]`` also trusts that folder's own
certificate (``own``: ``[tls] cert``, each certificate in it a trust anchor), whoever signed it:
the platform the folder configures is reached without ``--ca``, by ``radio health`` (which trusts
that certificate alone) as by ``radio listen`` and the generators (which trust it besides the
system's store). ``Trust`` carries that choice to a client's MQTT and HTTPS connections alike.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

from radio.errors import RadioError

if TYPE_CHECKING:
    import requests
    from cryptography import x509

    from radio.config import TlsSettings

# cryptography (some 30 ms to import) loads where a certificate is read: every server and client
# imports this module, and most run without TLS.


class TlsError(RadioError):
    """A certificate, key or CA file Radio cannot use."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        msg = f"cannot read the TLS {what} {path}: {exc.strerror or exc}"
        raise TlsError(msg) from None


def load_certificates(path: Path, what: str = "certificate") -> list[x509.Certificate]:
    """The PEM certificates in a file (a server's chain, or a CA bundle), at least one."""
    from cryptography import x509  # noqa: PLC0415 - see the imports

    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        msg = f"the TLS {what} {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        raise TlsError(msg)
    return certificates


def check_server(tls: TlsSettings, now: datetime | None = None) -> x509.Certificate:
    """The server certificate, once its file, its key and its dates have been checked."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - see the imports
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    leaf = load_certificates(tls.cert)[0]
    moment = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= moment:
        msg = (
            f"the TLS certificate {tls.cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: "
            "renew it (or make a development one with: radio certs dev)"
        )
        raise TlsError(msg)
    if leaf.not_valid_before_utc > moment:
        start = leaf.not_valid_before_utc
        msg = f"the TLS certificate {tls.cert} is not valid before {start:%Y-%m-%d %H:%M} UTC"
        raise TlsError(msg)
    data = _read(tls.key, "key")
    try:
        mode = stat.S_IMODE(tls.key.stat().st_mode)
    except OSError as exc:
        msg = f"cannot read the TLS key {tls.key}: {exc.strerror or exc}"
        raise TlsError(msg) from None
    if mode & 0o004:
        msg = f"the TLS key {tls.key} is readable by every user (mode {mode:04o}): chmod 600 {tls.key}"
        raise TlsError(msg)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        msg = f"the TLS key {tls.key} is protected by a passphrase: Radio needs it without one (mode 0600)"
        raise TlsError(msg) from None
    except (ValueError, UnsupportedAlgorithm):
        msg = f"the TLS key {tls.key} is not a PEM private key (-----BEGIN ... PRIVATE KEY-----)"
        raise TlsError(msg) from None
    if key.public_key() != leaf.public_key():
        msg = f"the TLS key {tls.key} does not match the certificate {tls.cert}"
        raise TlsError(msg)
    return leaf


def server_context(tls: TlsSettings) -> ssl.SSLContext:
    """What a TLS listener serves with: the checked certificate chain and key, TLS 1.2 at least."""
    check_server(tls)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        msg = f"the TLS certificate {tls.cert} and key {tls.key} cannot be used: {exc}"
        raise TlsError(msg) from None
    return context


def client_context(ca: Path | None = None, *, own: Path | None = None, system: bool = True) -> ssl.SSLContext:
    """What a client verifies servers with: the CA file given alone, else the system's and ``own``'s.

    Without a CA file: the system's trust store (unless ``system`` is False) and the radio folder's
    own certificate file ``own``, if any. Every certificate in ``own`` is an anchor: the server's
    own certificate is trusted as itself, though the file holds no CA that signed it (a ``radio
    certs dev`` certificate, or any other).
    """
    if ca is not None:
        load_certificates(ca, "CA file")
        context = ssl.create_default_context(cafile=str(ca))
    else:
        context = ssl.create_default_context() if system else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if own is not None:
            load_certificates(own)
            context.load_verify_locations(cafile=str(own))
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class Trust:
    """Whom a client believes: the CA file given (``--ca``) alone, else the system's and ``own``'s.

    ``own`` is the radio folder's own certificate (``[tls] cert``); ``client_context`` says how.
    """

    ca: Path | None = None
    own: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The context of an MQTT client's mqtts:// or wss:// connection."""
        return client_context(self.ca, own=self.own)

    def verify(self) -> str | bool:
        """What each HTTPS request of ``requests`` is given as ``verify``: the CA file, else True.

        It must be passed to each request: ``requests`` lets ``REQUESTS_CA_BUNDLE`` and
        ``CURL_CA_BUNDLE`` override a session's own ``verify``, so on a machine where either is set a
        session told ``--ca`` would still trust the other bundle and refuse the server. Given per
        request, ``--ca`` wins, as it does for mqtts and wss. Without it, those variables apply as
        they do for every other program (their bundle is trusted besides ``own``).
        """
        if self.ca is None:
            return True
        load_certificates(self.ca, "CA file")  # missing or not PEM: one line now, not at the first request
        return str(self.ca)

    def session(self) -> requests.Session:
        """A ``requests`` session whose HTTPS connections trust ``own`` too, when no CA file is given."""
        import requests  # noqa: PLC0415 - only the clients that speak HTTP load it

        session = requests.Session()
        if self.ca is None and self.own is not None:
            adapter = requests.adapters.HTTPAdapter()
            # urllib3 wraps each connection of its pools with this context, and loads no other
            # trust into it unless a request names a CA bundle.
            adapter.poolmanager.connection_pool_kw["ssl_context"] = self.context()
            session.mount("https://", adapter)
        return session


SYSTEM_TRUST: Final = Trust()
"""A client's trust outside a radio folder, with no ``--ca``: the system's store alone."""


def own_certificate(tls: TlsSettings | None) -> Path | None:
    """The radio folder's own certificate for its clients to trust: ``[tls] cert``, when readable.

    A file this user cannot read (a server's, kept from other users) or that holds no certificate
    is left out, not an error: the client then trusts what it would without it.
    """
    if tls is None:
        return None
    try:
        load_certificates(tls.cert)
    except TlsError:
        return None
    return tls.cert


def verify_failure(error: BaseException, where: str) -> str | None:
    """One line for a handshake refused over the server's certificate; None for any other error.

    Only this failure is final for a client: a server restarting or a network down is retried.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = error.verify_message or str(error)
        return (
            f"refused the certificate of {where}: {reason} "
            "(give the CA that signed it with --ca FILE, or use the host name it was made for)"
        )
    return None


def certificate_refusal(error: BaseException, where: str, depth: int = 0) -> str | None:
    """The certificate refusal somewhere inside the errors ``requests`` and urllib3 wrap around it."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return verify_failure(error, where)
    reason = getattr(error, "reason", None)
    inner = [error.__cause__, error.__context__, reason, *error.args]
    for cause in inner:
        if isinstance(cause, BaseException) and depth < 8:
            found = certificate_refusal(cause, where, depth + 1)
            if found is not None:
                return found
    return None


def feed_handshake(transport: asyncio.Transport, data: bytes) -> None:
    """Hand bytes read from ``transport`` to the TLS protocol that now reads it, as if it had.

    For a server that read a client's first bytes (its ClientHello) before starting TLS on the
    socket: called soon after ``loop.start_tls`` is, before the handshake starts.
    """
    tls = cast("asyncio.BufferedProtocol", transport.get_protocol())  # uvloop's, by its methods alone
    if transport.is_closing() or not hasattr(tls, "buffer_updated"):
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(tls.get_buffer(len(view))).cast("B")
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        tls.buffer_updated(size)
        view = view[size:]
