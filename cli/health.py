"""``radio health``: whether the platform's HTTP door answers, for a container's HEALTHCHECK or a monitor.

It finds the door as the bridge serves it, from the configuration (the one rule): ``[bridge]
listen``, or the address ``radio up --http`` was given when ``--http`` names it, reached on
loopback when it binds every interface; over HTTPS when ``[tls]`` is set, since the bridge then
serves HTTPS on that address. Under TLS, what answers is verified against the configured
certificate itself (``[tls] cert``, taken as the trust anchor) for a name that certificate is
for: no CA file is needed, the certificate may come from any CA, and a server presenting some
other certificate is not healthy. ``/healthz`` answers 200 while the bridge's broker link is up.

Exit status 0 when healthy and 1 otherwise, even for a configuration it cannot read: Docker and
podman read 1 as unhealthy and reserve 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from typing import TYPE_CHECKING, Final

from radio.cli import options
from radio.cli.options import Parser
from radio.errors import RadioError

if TYPE_CHECKING:
    import ssl

    from cryptography import x509

    from radio.config import Address, Settings, TlsSettings

# http.client and ssl load in the check itself: every other command builds this one's parser too.

EXIT_UNHEALTHY: Final = 1
TIMEOUT: Final = 4.0
"""Seconds for the whole check: under a HEALTHCHECK's own timeout (5 s in the image)."""


class Unhealthy(RadioError):
    """The door did not answer 200, said in one line."""


def add_command(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio health [--http HOST:PORT] [--timeout SECONDS]``."""
    health = commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 if the HTTP door's /healthz answers 200 (HTTPS when [tls] is set), else 1",
        description="Ask the bridge's /healthz, where the configuration says it listens, over HTTPS "
        "verified against [tls] cert when TLS is on. Exit 0 when it answers 200 (the bridge is up "
        "and linked to the broker), 1 otherwise: what a container's HEALTHCHECK runs.",
    )
    health.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=options.address,
        help="the address the bridge was given (radio up --http), if not [bridge] listen",
    )
    health.add_argument(
        "--timeout",
        type=options.seconds(0.1, 60),
        default=TIMEOUT,
        help=f"seconds to wait for the answer (0.1 to 60, default {TIMEOUT:g})",
    )
    # A mistyped option in a HEALTHCHECK is a failed check like any other: 1, never the 2 it reserves.
    health.refused_status = EXIT_UNHEALTHY
    health.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        url = check(options.settings(args), args.http, args.timeout)
    except RadioError as exc:
        sys.stderr.write(f"radio health: {exc}\n")
        return EXIT_UNHEALTHY
    sys.stdout.write(f"healthy: {url} answered 200\n")
    return 0


def check(settings: Settings, listen: Address | None = None, timeout: float = TIMEOUT) -> str:
    """The URL of the door's /healthz once it answered 200; ``Unhealthy`` saying why otherwise."""
    import http.client  # noqa: PLC0415 - see the imports
    import ssl  # noqa: PLC0415

    address = (listen or settings.bridge.listen).local()
    url = f"{'https' if settings.tls else 'http'}://{address}/healthz"
    if address.port == 0:  # no bridge listens there: the configuration leaves the port to the system
        msg = f"{url}: {settings.path} leaves [bridge] listen's port to the system; give --http HOST:PORT"
        raise Unhealthy(msg)
    request = f"GET /healthz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode("ascii")
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
            if settings.tls is None:
                status, body = _ask(raw, request)
            else:
                context, name = _trust(settings.tls)
                with context.wrap_socket(raw, server_hostname=name) as secure:
                    status, body = _ask(secure, request)
    except ssl.SSLCertVerificationError as exc:
        msg = (
            f"{url}: the server's certificate is not {settings.tls.cert if settings.tls else 'trusted'} "
            f"({exc.verify_message or exc}): restart the platform after changing [tls] cert"
        )
        raise Unhealthy(msg) from None
    except (OSError, http.client.HTTPException) as exc:
        msg = f"{url}: no answer: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
        raise Unhealthy(msg) from None
    if status != 200:
        msg = f"{url} answered {status}: {body.decode('utf-8', 'replace').strip()[:200]}"
        raise Unhealthy(msg)
    return url


def _ask(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    import http.client  # noqa: PLC0415 - see the imports

    sock.sendall(request)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read(4096)


def _trust(tls: TlsSettings) -> tuple[ssl.SSLContext, str]:
    """A context trusting the configured certificate (and its chain) alone, and a name it is for."""
    from radio.tls import client_context, load_certificates  # noqa: PLC0415 - cryptography loads only under TLS

    certificates = load_certificates(tls.cert)
    # The folder's own certificate, as every client run in the folder trusts it: here, alone.
    return client_context(own=tls.cert, system=False), _name_of(certificates[0])


def _name_of(certificate: x509.Certificate) -> str:
    """A host name (or address) the certificate is for, to check it against as a client would."""
    from cryptography import x509  # noqa: PLC0415 - loads only under TLS

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    for dns in names.get_values_for_type(x509.DNSName):
        # A wildcard stands for any one label: ask for one it covers.
        return "healthz" + dns[1:] if dns.startswith("*.") else dns
    for ip in names.get_values_for_type(x509.IPAddress):
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return str(ip)
    for attribute in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        return str(attribute.value)
    msg = "the TLS certificate names no host (no subject alternative name, no common name)"
    raise Unhealthy(msg)
