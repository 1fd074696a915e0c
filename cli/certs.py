"""``radio certs dev``: a development CA and a server certificate it signed, to try TLS on one machine.

Clients trust the CA (``--ca DIR/ca.pem``); servers present the certificate (``[tls] cert =
"server.pem"``, ``key = "server.key"``). The CA's own key is not kept: nothing can sign another
certificate with it, so trusting ``ca.pem`` trusts this one server certificate and no other. For
a server others reach, use a certificate from a real CA (an ACME client such as certbot or
Caddy), which clients trust through the system's store without ``--ca``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from radio.errors import RadioError
from radio.files import write_private

DEFAULT_HOSTS: Final = ("localhost", "127.0.0.1")
VALID_DAYS: Final = 365
"""A development certificate lasts a year: long enough to forget about, short enough to matter."""


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _alternative_names(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_dev_certificates(
    hosts: Sequence[str], *, now: datetime | None = None, days: int = VALID_DAYS
) -> tuple[bytes, bytes, bytes]:
    """PEM bytes of a CA certificate, and of a server certificate for ``hosts`` and its key."""
    start = (now or datetime.now(UTC)) - timedelta(minutes=5)  # a clock a little behind still accepts it
    end = start + timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Radio development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_alternative_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        server.public_bytes(serialization.Encoding.PEM),
        key_pem,
    )


def dev(folder: Path, hosts: Sequence[str]) -> tuple[Path, Path, Path]:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (0600) into ``folder``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ca, cert, key = make_dev_certificates(hosts or DEFAULT_HOSTS)
        folder = folder.absolute()
        paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
        paths[0].write_bytes(ca)
        paths[1].write_bytes(cert)
        write_private(paths[2], key, durable=True)
    except OSError as exc:
        msg = f"cannot write the certificates into {folder}: {exc.strerror or exc}"
        raise RadioError(msg) from None
    return paths
