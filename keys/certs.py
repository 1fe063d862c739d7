"""X.509 certificates for transport security.

Peers authenticate each other with self-signed ECDSA P-256 certificates that
each side pins (grpcio's TLS stack cannot use Ed25519 certificates). The local
API uses a small certificate authority of the node's own, so that more client
identities can be issued later without touching the server's trust list.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CERT_LIFETIME = dt.timedelta(days=5 * 365)
# Tolerates clocks a little behind the issuer's.
BACKDATE = dt.timedelta(hours=1)


@dataclass(frozen=True)
class IssuedCertificate:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """``certificate_sha256`` of the certificate."""
        return certificate_sha256(self.certificate.public_bytes(serialization.Encoding.DER))


def _name(common_name: str, organisation: str = "Liaison Exchange") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    until: dt.datetime | None = None,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(until or now + CERT_LIFETIME)
    )


def self_signed_peer_certificate(agency_id: str, dns_name: str) -> IssuedCertificate:
    """A self-signed server-and-client certificate for a node's peer listener."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(agency_id)
    now = dt.datetime.now(dt.UTC)
    cert = (
        _builder(name, name, key.public_key(), now)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(key, cert)


def local_certificate_authority(agency_id: str) -> IssuedCertificate:
    """A CA that issues the local API's server certificate and client credentials."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"{agency_id} local API CA")
    now = dt.datetime.now(dt.UTC)
    cert = (
        _builder(name, name, key.public_key(), now)
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
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(key, cert)


def issue_api_server_certificate(
    ca: IssuedCertificate, host: str, extra_names: tuple[str, ...] = ()
) -> IssuedCertificate:
    """The local API listener's certificate, valid for ``host`` (unless it is a wildcard
    address), ``localhost``, loopback, and the host names clients dial (``extra_names``)."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        if not address.is_unspecified:
            names.append(x509.IPAddress(address))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    names += [x509.DNSName(name) for name in extra_names if name != "localhost"]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return _issue(ca, "local API", names, ExtendedKeyUsageOID.SERVER_AUTH)


def issue_api_client_certificate(
    ca: IssuedCertificate, identity: str, expires_at: dt.datetime | None = None
) -> IssuedCertificate:
    """A client credential for the local API; ``identity`` becomes the subject CN. It is
    valid until ``expires_at`` (by default the usual certificate lifetime)."""
    return _issue(ca, identity, [], ExtendedKeyUsageOID.CLIENT_AUTH, expires_at)


def _issue(
    ca: IssuedCertificate,
    common_name: str,
    names: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    expires_at: dt.datetime | None = None,
) -> IssuedCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        _builder(_name(common_name), ca.certificate.subject, key.public_key(), now, expires_at)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return IssuedCertificate(key, builder.sign(ca.key, hashes.SHA256()))


def certificate_sha256(der: bytes) -> str:
    """Lower-case hex SHA-256 of a DER certificate: how pinned certificates are named."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return digest.finalize().hex()


def pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def der_to_pem(der: bytes) -> bytes:
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
