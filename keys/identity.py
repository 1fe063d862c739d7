"""A node's own private keys, their files, and the card that publishes them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, x25519
from google.protobuf.timestamp_pb2 import Timestamp

from liaison.keys.card import CARD_VERSION, PeerCard, parse_card, sign_card
from liaison.keys.certs import IssuedCertificate, self_signed_peer_certificate
from liaison.keys.errors import KeyStoreError
from liaison.keys.ids import mldsa65_key_id, tls_name
from liaison.keys.keystore import KeyEntry, NewKey, OpenedKeys
from liaison.v1 import envelope_pb2

SIGNING_KEY_FILE = "signing.key"
KEM_MLKEM_FILE = "kem-mlkem768.key"
KEM_X25519_FILE = "kem-x25519.key"
TLS_KEY_FILE = "tls.key"
TLS_CERT_FILE = "tls.crt"
MLDSA65_KEY_FILE = "signing-mldsa65.key"
# The card's ML-DSA-65 signature, made once at init and kept: ML-DSA-65 signing is
# randomized, and a card signed afresh at every start would change its fingerprint.
CARD_MLDSA65_SIGNATURE_FILE = "card-mldsa65.sig"
# After a rotation (liaison.keys.keyring): the node's signed card, the card it replaced
# (while that card's signing and TLS keys are kept), and the update that links them.
CARD_FILE = "card.bin"
PREVIOUS_CARD_FILE = "previous-card.bin"
CARD_UPDATE_FILE = "card-update.bin"


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
    # Optional post-quantum card signing key, and the card signature it made at init.
    mldsa65_key: mldsa.MLDSA65PrivateKey | None = None
    card_mldsa65_signature: bytes = b""
    # 0 for the card a node is created with, one more at each rotation.
    sequence: int = 0
    # The signed card as stored after a rotation; ``card`` is then exactly these bytes.
    stored_card: bytes | None = None

    @cached_property
    def decryption_key(self) -> hpke.MLKEM768X25519PrivateKey:
        return hpke.MLKEM768X25519PrivateKey(self.kem_mlkem, self.kem_x25519)

    @cached_property
    def card(self) -> PeerCard:
        """This node's own signed card (the same bytes every time for the same identity)."""
        if self.stored_card is not None:
            return parse_card(self.stored_card)
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
            sequence=self.sequence,
        )
        if self.mldsa65_key is not None:
            card.mldsa65_key = self.mldsa65_key.public_key().public_bytes_raw()
        signed = sign_card(
            card, self.signing_key, self.mldsa65_key, mldsa65_signature=self.card_mldsa65_signature
        )
        return parse_card(signed)


def generate_identity(
    agency_id: str, name: str, endpoint: str, *, mldsa65: bool = False
) -> NodeIdentity:
    """Fresh keys for a new node. The creation time is whole seconds, UTC.

    With ``mldsa65`` the node also gets an ML-DSA-65 key, and its card is signed with both.
    """
    return NodeIdentity(
        agency_id=agency_id,
        name=name,
        endpoint=endpoint,
        created_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        signing_key=ed25519.Ed25519PrivateKey.generate(),
        kem_mlkem=mlkem.MLKEM768PrivateKey.generate(),
        kem_x25519=x25519.X25519PrivateKey.generate(),
        tls=self_signed_peer_certificate(agency_id, tls_name(agency_id)),
        mldsa65_key=mldsa.MLDSA65PrivateKey.generate() if mldsa65 else None,
    )


# Roles of the node's own keys in its key store, and what each is.
SIGNING, KEM_MLKEM, KEM_X25519, TLS = "signing", "kem-mlkem768", "kem-x25519", "tls"
MLDSA65 = "signing-mldsa65"
_KINDS = {
    SIGNING: "Ed25519 signing key",
    MLDSA65: "ML-DSA-65 card signing key",
    KEM_MLKEM: "ML-KEM-768 decryption key (hybrid HPKE, first half)",
    KEM_X25519: "X25519 decryption key (hybrid HPKE, second half)",
    TLS: "ECDSA P-256 TLS key of the peer listener",
}


def _der(
    key: ed25519.Ed25519PrivateKey
    | mldsa.MLDSA65PrivateKey
    | mlkem.MLKEM768PrivateKey
    | x25519.X25519PrivateKey
    | ec.EllipticCurvePrivateKey,
) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def identity_keys(
    identity: NodeIdentity, roles: frozenset[str] | None = None, *, file_suffix: str = ""
) -> list[NewKey]:
    """The node's private keys as key-store entries, ready to seal: all of them, or
    those of ``roles``. ``file_suffix`` tells a rotated key's file from its predecessor's."""
    card = identity.card
    ids = {
        SIGNING: card.signing_key_id,
        KEM_MLKEM: card.encryption_key_id,
        KEM_X25519: card.encryption_key_id,
        TLS: card.tls_fingerprint,
    }
    secrets = {
        SIGNING: _der(identity.signing_key),
        KEM_MLKEM: _der(identity.kem_mlkem),
        KEM_X25519: _der(identity.kem_x25519),
        TLS: _der(identity.tls.key),
    }
    if identity.mldsa65_key is not None:
        ids[MLDSA65] = mldsa65_key_id(identity.mldsa65_key.public_key().public_bytes_raw())
        secrets[MLDSA65] = _der(identity.mldsa65_key)
    return [
        NewKey(
            KeyEntry(
                role=role,
                file=FILES[role].replace(".key", f"{file_suffix}.key"),
                key_id=ids[role],
                kind=_KINDS[role],
                state="active",
                created=identity.created_at,
            ),
            secret,
        )
        for role, secret in secrets.items()
        if roles is None or role in roles
    ]


def identity_public_files(identity: NodeIdentity) -> dict[str, bytes]:
    """The public files kept beside the node's keys: its TLS certificate, and the
    ML-DSA-65 signature of its card if it has one."""
    files = {TLS_CERT_FILE: identity.tls.certificate_pem()}
    if identity.mldsa65_key is not None:
        outer = envelope_pb2.SignedCard.FromString(identity.card.signed_card)
        files[CARD_MLDSA65_SIGNATURE_FILE] = outer.mldsa65_signature
    return files


FILES = {
    SIGNING: SIGNING_KEY_FILE,
    KEM_MLKEM: KEM_MLKEM_FILE,
    KEM_X25519: KEM_X25519_FILE,
    TLS: TLS_KEY_FILE,
    MLDSA65: MLDSA65_KEY_FILE,
}


def load_private_key(der: bytes, kind: type[Any], name: str) -> Any:
    """Parse a PKCS#8 DER key of the class ``kind``; ``KeyStoreError`` naming ``name``.

    (Typed ``Any``: the key classes are abstract, which ``type[T]`` does not admit.)
    """
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyStoreError(f"the {name} key does not parse") from exc
    if not isinstance(key, kind):
        raise KeyStoreError(f"the {name} key is the wrong kind of key")
    return key


def load_identity(
    keys: OpenedKeys, *, agency_id: str, name: str, endpoint: str, created_at: dt.datetime
) -> NodeIdentity:
    """The node's identity from its unlocked key store; raises ``KeyStoreError``."""
    try:
        certificate = x509.load_pem_x509_certificate(keys.public(TLS_CERT_FILE))
    except (ValueError, x509.InvalidVersion) as exc:
        raise KeyStoreError(f"TLS certificate {TLS_CERT_FILE} is unreadable") from exc
    tls_key = load_private_key(keys.private(TLS), ec.EllipticCurvePrivateKey, TLS)
    mldsa65_key, card_signature = None, b""
    if keys.holds(MLDSA65):
        mldsa65_key = load_private_key(keys.private(MLDSA65), mldsa.MLDSA65PrivateKey, MLDSA65)
        card_signature = keys.public(CARD_MLDSA65_SIGNATURE_FILE)
    return NodeIdentity(
        agency_id=agency_id,
        name=name,
        endpoint=endpoint,
        created_at=created_at,
        signing_key=load_private_key(keys.private(SIGNING), ed25519.Ed25519PrivateKey, SIGNING),
        kem_mlkem=load_private_key(keys.private(KEM_MLKEM), mlkem.MLKEM768PrivateKey, KEM_MLKEM),
        kem_x25519=load_private_key(keys.private(KEM_X25519), x25519.X25519PrivateKey, KEM_X25519),
        tls=IssuedCertificate(tls_key, certificate),
        mldsa65_key=mldsa65_key,
        card_mldsa65_signature=card_signature,
    )
