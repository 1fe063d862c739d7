"""A node's own private keys, their files, and the card that publishes them."""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, x25519
from google.protobuf.timestamp_pb2 import Timestamp

from liaison.keys.card import CARD_VERSION, PeerCard, parse_card, sign_card
from liaison.keys.certs import IssuedCertificate, self_signed_peer_certificate
from liaison.keys.errors import KeyStoreError
from liaison.keys.ids import tls_name
from liaison.v1 import envelope_pb2

SIGNING_KEY_FILE = "signing.key"
KEM_MLKEM_FILE = "kem-mlkem768.key"
KEM_X25519_FILE = "kem-x25519.key"
TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"


@dataclass(frozen=True)
class NodeIdentity:
    """The private half of a node: its signing, decryption and TLS keys."""

    agency_id: str
    name: str
    endpoint: str
    created_at: dt.datetime
    signing_key: ed25519.Ed25519PrivateKey
    kem_mlkem: mlkem.MLKEM768PrivateKey
    kem_x25519: x25519.X25519PrivateKey
    tls: IssuedCertificate

    @cached_property
    def decryption_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self.kem_mlkem, self.kem_x25519)

    @cached_property
    def card(self) -> PeerCard:
        """This node's own signed card (the same bytes every time for the same identity)."""
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        created = Timestamp()
        created.FromDatetime(self.created_at)
        card = envelope_pb2.AgencyCard(
            version=CARD_VERSION,
            agency_id=self.agency_id,
            name=self.name,
            endpoint=self.endpoint,
            signing_key=self.signing_key.public_key().public_bytes(*raw),
            kem_mlkem768_key=self.kem_mlkem.public_key().public_bytes(*raw),
            kem_x25519_key=self.kem_x25519.public_key().public_bytes(*raw),
            tls_certificate=self.tls.certificate.public_bytes(serialization.Encoding.DER),
            created_at=created,
        )
        return parse_card(sign_card(card, self.signing_key))


def generate_identity(agency_id: str, name: str, endpoint: str) -> NodeIdentity:
    """Fresh keys for a new node. The creation time is whole seconds, UTC."""
    return NodeIdentity(
        agency_id=agency_id,
        name=name,
        endpoint=endpoint,
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        signing_key=ed25519.Ed25519PrivateKey.generate(),
        kem_mlkem=mlkem.MLKEM768PrivateKey.generate(),
        kem_x25519=x25519.X25519PrivateKey.generate(),
        tls=self_signed_peer_certificate(agency_id, tls_name(agency_id)),
    )


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600; never overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def read_private_file(path: Path) -> bytes:
    """Read a key file, refusing it if group or others can read or write it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyStoreError(f"key file {path} is missing") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyStoreError(
            f"key file {path} is accessible to others (mode {mode & 0o777:o}); "
            "run: chmod 600 " + str(path)
        )
    try:
        return path.read_bytes()
    except OSError as exc:  # a directory, a dangling link, no permission
        raise KeyStoreError(f"key file {path} is unreadable: {exc.strerror}") from exc


def _pkcs8(
    key: ed25519.Ed25519PrivateKey
    | mlkem.MLKEM768PrivateKey
    | x25519.X25519PrivateKey
    | ec.EllipticCurvePrivateKey,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def save_identity(identity: NodeIdentity, keys_dir: Path) -> None:
    """Write the private keys (PKCS#8, mode 0600) and TLS certificate into ``keys_dir``."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_file(keys_dir / SIGNING_KEY_FILE, _pkcs8(identity.signing_key))
    write_private_file(keys_dir / KEM_MLKEM_FILE, _pkcs8(identity.kem_mlkem))
    write_private_file(keys_dir / KEM_X25519_FILE, _pkcs8(identity.kem_x25519))
    write_private_file(keys_dir / TLS_KEY_FILE, identity.tls.key_pem())
    (keys_dir / TLS_CERT_FILE).write_bytes(identity.tls.certificate_pem())


def load_identity(
    keys_dir: Path, *, agency_id: str, name: str, endpoint: str, created_at: dt.datetime
) -> NodeIdentity:
    """Load the keys written by ``save_identity``; raises ``KeyStoreError``."""

    def load(file: str, kind: type) -> object:
        data = read_private_file(keys_dir / file)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f"key file {keys_dir / file} is unreadable: {exc}") from exc
        if not isinstance(key, kind):
            raise KeyStoreError(f"key file {keys_dir / file} holds the wrong kind of key")
        return key

    signing = load(SIGNING_KEY_FILE, ed25519.Ed25519PrivateKey)
    kem_mlkem = load(KEM_MLKEM_FILE, mlkem.MLKEM768PrivateKey)
    kem_x25519 = load(KEM_X25519_FILE, x25519.X25519PrivateKey)
    tls_key = load(TLS_KEY_FILE, ec.EllipticCurvePrivateKey)
    try:
        certificate = x509.load_pem_x509_certificate((keys_dir / TLS_CERT_FILE).read_bytes())
    except (OSError, ValueError, x509.InvalidVersion) as exc:
        raise KeyStoreError(f"TLS certificate {keys_dir / TLS_CERT_FILE} is unreadable") from exc
    assert isinstance(signing, ed25519.Ed25519PrivateKey)
    assert isinstance(kem_mlkem, mlkem.MLKEM768PrivateKey)
    assert isinstance(kem_x25519, x25519.X25519PrivateKey)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    return NodeIdentity(
        agency_id=agency_id,
        name=name,
        endpoint=endpoint,
        created_at=created_at,
        signing_key=signing,
        kem_mlkem=kem_mlkem,
        kem_x25519=kem_x25519,
        tls=IssuedCertificate(tls_key, certificate),
    )
