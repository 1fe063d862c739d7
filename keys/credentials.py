"""Local-API client credentials: a folder an operator or agency system is handed.

ca.crt        the node's local API CA (trusted for the server)
client.crt    this client's certificate, issued by that CA
client.key    its private key (mode 0600)
target        host:port of the node's local API
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from liaison.keys.errors import KeyStoreError
from liaison.keys.identity import read_private_file, write_private_file

API_SERVER_NAME = "localhost"


@dataclass(frozen=True)
class ClientCredential:
    ca_certificate: bytes
    certificate: bytes
    private_key: bytes
    target: str

    def save(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True)
        (folder / "ca.crt").write_bytes(self.ca_certificate)
        (folder / "client.crt").write_bytes(self.certificate)
        write_private_file(folder / "client.key", self.private_key)
        (folder / "target").write_text(self.target + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> ClientCredential:
        """Read a credential folder and check that each file holds what its name says.

        Raises ``KeyStoreError`` naming the file if one is missing or unreadable,
        a certificate or the key does not parse, the key is unsafe or is not the
        certificate's, or ``target`` is not one ``host:port`` line.
        """
        try:
            credential = cls(
                ca_certificate=_read(folder / "ca.crt"),
                certificate=_read(folder / "client.crt"),
                private_key=read_private_file(folder / "client.key"),
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


# One line of printable characters without spaces, ending in a port.
_TARGET = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+:[0-9]{1,5}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from exc
