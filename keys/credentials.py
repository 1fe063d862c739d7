"""Local-API client credentials: a folder an operator or agency system is handed.

ca.crt        the node's local API CA (trusted for the server)
client.crt    this client's certificate, issued by that CA
client.key    its private key, sealed under the credential's passphrase (mode 0600)
target        host:port of the node's local API

A credential also goes out as one PKCS#12 file (``ClientCredential.pkcs12``) for gRPC
clients in other languages, which cannot open the sealed key. That file is encrypted
under a fresh random passphrase (``export_passphrase``), never the credential's own.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from liaison.keys.certs import certificate_sha256, pem_to_der
from liaison.keys.errors import KeyStoreError
from liaison.keys.keystore import read_private_file, write_private_file
from liaison.keys.sealed import (
    CREDENTIAL_LOG2_N,
    KdfParams,
    Passphrase,
    SealedFile,
    Unlocker,
    seal,
)

API_SERVER_NAME = "localhost"
CLIENT_KEY_ROLE = "client"
# A PKCS#12 export: PBKDF2-HMAC-SHA256 rounds for its key and certificates (OWASP's 2023
# figure), and the rounds of the PKCS#12 KDF that keys its MAC, which cryptography fixes
# at 2,048 and offers no setting for. A guess at the passphrase can be checked against
# the MAC at that cost, which would make a human-chosen passphrase the weak point; so
# the file is encrypted under a random passphrase of EXPORT_PASSPHRASE_BYTES bytes (192
# bits), which no number of rounds, 2,048 or 600,000, brings within reach of guessing.
PKCS12_KDF_ROUNDS = 600_000
PKCS12_MAC_ROUNDS = 2048
EXPORT_PASSPHRASE_BYTES = 24
EXPORT_PASSPHRASE_BITS = EXPORT_PASSPHRASE_BYTES * 8


def export_passphrase() -> Passphrase:
    """A fresh passphrase for one PKCS#12 export: ``EXPORT_PASSPHRASE_BYTES`` bytes from
    ``secrets``, as 32 characters of ``A-Z a-z 0-9 - _`` (URL-safe base64, no padding),
    which every PKCS#12 reader takes as a password."""
    return Passphrase(secrets.token_urlsafe(EXPORT_PASSPHRASE_BYTES))


@dataclass(frozen=True)
class ClientCredential:
    """A credential in memory; ``private_key`` is PEM, as gRPC takes it, and never on disk."""

    ca_certificate: bytes
    certificate: bytes
    private_key: bytes
    target: str

    def save(self, folder: Path, unlocker: Unlocker, *, log2_n: int = CREDENTIAL_LOG2_N) -> None:
        """Write the folder, the key sealed under ``unlocker``'s passphrase."""
        folder.mkdir(mode=0o700, parents=True)
        (folder / "ca.crt").write_bytes(self.ca_certificate)
        (folder / "client.crt").write_bytes(self.certificate)
        write_private_file(folder / "client.key", self._sealed_key(unlocker, log2_n))
        (folder / "target").write_text(self.target + "\n", encoding="utf-8")

    def reseal(self, folder: Path, unlocker: Unlocker, *, log2_n: int) -> None:
        """Replace ``folder/client.key`` (one rename) by this key sealed under ``unlocker``."""
        fresh = folder / "client.key.new"
        fresh.unlink(missing_ok=True)
        write_private_file(fresh, self._sealed_key(unlocker, log2_n))
        fresh.replace(folder / "client.key")

    def pkcs12(self, passphrase: Passphrase, *, name: str) -> bytes:
        """This credential as a PKCS#12 file under ``passphrase``, all of it written by
        cryptography: the key and the client certificate under the friendly name ``name``
        (a Java KeyStore's alias), and the CA certificate(s) of ``ca.crt``. Key and
        certificates are encrypted with PBES2 (PBKDF2-HMAC-SHA256 at ``PKCS12_KDF_ROUNDS``,
        AES-256-CBC); the file's MAC is HMAC-SHA256 keyed at ``PKCS12_MAC_ROUNDS``, so
        ``passphrase`` should come from ``export_passphrase``, not from a person.

        Raises ``KeyStoreError`` if the key is not an elliptic-curve key (ours all are) and
        ``ValueError`` if the passphrase is not UTF-8 (PKCS#12 passwords are text).
        """
        key = serialization.load_pem_private_key(self.private_key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # as certs.py issues them
            raise KeyStoreError("the credential's key is not an elliptic-curve key")
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(PKCS12_KDF_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(passphrase.reveal())
        )
        return pkcs12.serialize_key_and_certificates(
            name.encode("utf-8"),
            key,
            x509.load_pem_x509_certificate(self.certificate),
            x509.load_pem_x509_certificates(self.ca_certificate),
            encryption,
        )

    def _sealed_key(self, unlocker: Unlocker, log2_n: int) -> bytes:
        key = serialization.load_pem_private_key(self.private_key, password=None)
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return seal(
            der,
            role=CLIENT_KEY_ROLE,
            key_id=certificate_sha256(pem_to_der(self.certificate)),
            params=KdfParams.fresh(log2_n),
            unlocker=unlocker,
        )

    @classmethod
    def load(cls, folder: Path, unlocker: Unlocker) -> ClientCredential:
        """Read a credential folder, open its key, and check each file holds what its name says.

        Raises ``KeyStoreError`` naming the file if one is missing or unreadable,
        a certificate or the key does not parse, the key does not open with the
        passphrase, is unsafe or is not the certificate's, or ``target`` is not
        one ``host:port`` line.
        """
        try:
            credential = cls(
                ca_certificate=_read(folder / "ca.crt"),
                certificate=_read(folder / "client.crt"),
                private_key=_open_key(folder / "client.key", unlocker),
                target=_read(folder / "target").decode("utf-8").strip(),
            )
        except FileNotFoundError as exc:
            raise KeyStoreError(f"{folder} is not a complete client credential") from exc
        except UnicodeDecodeError as exc:
            raise KeyStoreError(f"{folder / 'target'} is not UTF-8 text") from exc
        credential._check(folder)
        return credential

    def _check(self, folder: Path) -> None:
        # grpc takes any bytes here and fails only at connection time, as an
        # unreachable node; a malformed folder is refused now, by file name.
        try:
            x509.load_pem_x509_certificates(self.ca_certificate)
        except ValueError as exc:
            raise KeyStoreError(f"{folder / 'ca.crt'} holds no PEM certificate") from exc
        try:
            certificate = x509.load_pem_x509_certificate(self.certificate)
        except ValueError as exc:
            raise KeyStoreError(f"{folder / 'client.crt'} holds no PEM certificate") from exc
        try:
            key = serialization.load_pem_private_key(self.private_key, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyStoreError(f"{folder / 'client.key'} holds no usable private key") from exc
        if key.public_key() != certificate.public_key():
            raise KeyStoreError(f"{folder / 'client.key'} is not the key of client.crt")
        if not _TARGET.fullmatch(self.target):
            raise KeyStoreError(f"{folder / 'target'} does not hold one host:port line")


def _open_key(path: Path, unlocker: Unlocker) -> bytes:
    sealed = SealedFile.parse(read_private_file(path), str(path))
    der = sealed.open(unlocker, role=CLIENT_KEY_ROLE, name=str(path))
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"{path} holds no usable private key") from exc
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# One line of printable characters without spaces, ending in a port.
_TARGET = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+:[0-9]{1,5}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
