"""Agency cards: a node's public identity, self-signed, pinned by its peers."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from google.protobuf.message import DecodeError

from liaison.keys.certs import certificate_sha256
from liaison.keys.errors import CardError
from liaison.keys.ids import encryption_key_id, is_agency_id, signing_key_id, tls_name
from liaison.keys.labels import CARD_MLDSA65_CONTEXT, CARD_SIGNATURE_LABEL, signing_input
from liaison.keys.times import is_valid_timestamp
from liaison.v1 import envelope_pb2

CARD_VERSION = 1
_ARMOR_BEGIN = "-----BEGIN LIAISON AGENCY CARD-----"
_ARMOR_END = "-----END LIAISON AGENCY CARD-----"
# A valid google.protobuf.Timestamp: years 1 to 9999 (PROTOCOL.md section 1).


@dataclass(frozen=True)
class PeerCard:
    """A verified agency card: everything needed to seal to, verify and connect to a node."""

    agency_id: str
    name: str
    endpoint: str
    signing_key: ed25519.Ed25519PublicKey
    encryption_key: hpke.MLKEM768X25519PublicKey
    signing_key_id: str
    encryption_key_id: str
    tls_certificate: bytes
    tls_fingerprint: str
    created_at: dt.datetime
    signed_card: bytes
    # The card's ML-DSA-65 key, when its self-signature is also post-quantum.
    mldsa65_key: mldsa.MLDSA65PublicKey | None = None
    # 0 for a node's first card, one more at each rotation (liaison.keys.rotation).
    sequence: int = 0

    @property
    def post_quantum_signed(self) -> bool:
        """True if the card carries an ML-DSA-65 key and its signature verified too."""
        return self.mldsa65_key is not None

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the signed card's bytes: what a card update names as its predecessor."""
        return hashlib.sha256(self.signed_card).digest()

    @property
    def fingerprint(self) -> str:
        """Human-comparable SHA-256 of the signed card, in groups of four hex digits."""
        digest = self.sha256.hex()
        return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))

    @property
    def tls_name(self) -> str:
        return tls_name(self.agency_id)


def sign_card(
    card: envelope_pb2.AgencyCard,
    signing_key: ed25519.Ed25519PrivateKey,
    mldsa65_key: mldsa.MLDSA65PrivateKey | None = None,
    *,
    mldsa65_signature: bytes = b"",
) -> bytes:
    """Serialize ``card`` once and return the ``SignedCard`` bytes over it.

    With ``mldsa65_key`` the card is also signed with ML-DSA-65 (the caller puts its
    public key in ``card.mldsa65_key``). ML-DSA-65 signing is randomized, so a fresh
    signature gives other card bytes and another fingerprint each time:
    ``mldsa65_signature``, a signature made earlier, is reused if it verifies over
    these card bytes, so that the same card keeps the same bytes.
    """
    card_bytes = card.SerializeToString()
    message = signing_input(CARD_SIGNATURE_LABEL, card_bytes)
    signed = envelope_pb2.SignedCard(card=card_bytes, signature=signing_key.sign(message))
    if mldsa65_key is not None:
        try:
            mldsa65_key.public_key().verify(mldsa65_signature, message, CARD_MLDSA65_CONTEXT)
        except InvalidSignature:
            mldsa65_signature = mldsa65_key.sign(message, CARD_MLDSA65_CONTEXT)
        signed.mldsa65_signature = mldsa65_signature
    return signed.SerializeToString()


def parse_card(signed_card: bytes) -> PeerCard:
    """Verify a ``SignedCard``'s self-signature and return the card it holds.

    Raises ``CardError`` if the bytes do not parse, a field is missing or
    malformed, or the signature does not verify under the card's own key. A card
    that holds an ML-DSA-65 key must carry a second signature that verifies under
    it, and a card without one must carry none.
    """
    try:
        outer = envelope_pb2.SignedCard.FromString(signed_card)
        card = envelope_pb2.AgencyCard.FromString(outer.card)
    except DecodeError as exc:
        raise CardError("the card does not parse") from exc
    if card.version != CARD_VERSION:
        raise CardError(f"unsupported card version {card.version}")
    if not is_agency_id(card.agency_id):
        raise CardError(f"invalid agency id {card.agency_id!r}")
    # The self-signatures first: nothing unauthenticated reaches the key and X.509 parsers.
    try:
        signing_key = ed25519.Ed25519PublicKey.from_public_bytes(card.signing_key)
        signing_key.verify(outer.signature, signing_input(CARD_SIGNATURE_LABEL, outer.card))
    except ValueError as exc:
        raise CardError(f"the card of {card.agency_id} holds a malformed signing key") from exc
    except InvalidSignature as exc:
        raise CardError(f"the card of {card.agency_id} is not signed by its own key") from exc
    mldsa65_key = _verified_mldsa65_key(card, outer)
    try:
        kem_key = hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(card.kem_mlkem768_key),
            x25519.X25519PublicKey.from_public_bytes(card.kem_x25519_key),
        )
        certificate = x509.load_der_x509_certificate(card.tls_certificate)
    except (ValueError, x509.InvalidVersion) as exc:
        raise CardError(f"the card of {card.agency_id} holds a malformed key: {exc}") from exc
    _check_tls_name(card.agency_id, certificate)
    if not card.endpoint:
        raise CardError(f"the card of {card.agency_id} names no endpoint")
    return PeerCard(
        agency_id=card.agency_id,
        name=card.name,
        endpoint=card.endpoint,
        signing_key=signing_key,
        encryption_key=kem_key,
        signing_key_id=signing_key_id(card.signing_key),
        encryption_key_id=encryption_key_id(card.kem_mlkem768_key, card.kem_x25519_key),
        tls_certificate=card.tls_certificate,
        tls_fingerprint=certificate_sha256(card.tls_certificate),
        created_at=_created_at(card),
        signed_card=signed_card,
        mldsa65_key=mldsa65_key,
        sequence=card.sequence,
    )


def _verified_mldsa65_key(
    card: envelope_pb2.AgencyCard, outer: envelope_pb2.SignedCard
) -> mldsa.MLDSA65PublicKey | None:
    """The card's ML-DSA-65 key once its signature verifies; ``None`` for a card without."""
    if not card.mldsa65_key:
        if outer.mldsa65_signature:
            raise CardError(
                f"the card of {card.agency_id} carries an ML-DSA-65 signature but no ML-DSA-65 key"
            )
        return None
    if not outer.mldsa65_signature:
        # Stripping the second signature must not downgrade a post-quantum card.
        raise CardError(
            f"the card of {card.agency_id} holds an ML-DSA-65 key but no ML-DSA-65 signature"
        )
    try:
        key = mldsa.MLDSA65PublicKey.from_public_bytes(card.mldsa65_key)
        key.verify(
            outer.mldsa65_signature,
            signing_input(CARD_SIGNATURE_LABEL, outer.card),
            CARD_MLDSA65_CONTEXT,
        )
    except ValueError as exc:
        raise CardError(
            f"the card of {card.agency_id} holds a malformed ML-DSA-65 key: {exc}"
        ) from exc
    except InvalidSignature as exc:
        raise CardError(
            f"the card of {card.agency_id} is not signed by its own ML-DSA-65 key"
        ) from exc
    return key


def _created_at(card: envelope_pb2.AgencyCard) -> dt.datetime:
    stamp = card.created_at
    if not is_valid_timestamp(stamp):
        raise CardError(f"the card of {card.agency_id} has an invalid creation time")
    return stamp.ToDatetime(tzinfo=dt.UTC)


def _check_tls_name(agency_id: str, certificate: x509.Certificate) -> None:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound as exc:
        raise CardError(
            f"the TLS certificate of {agency_id} has no subject alternative name"
        ) from exc
    except (ValueError, x509.DuplicateExtension) as exc:  # extensions parse lazily
        raise CardError(
            f"the TLS certificate of {agency_id} has malformed extensions: {exc}"
        ) from exc
    if tls_name(agency_id) not in san.value.get_values_for_type(x509.DNSName):
        raise CardError(
            f"the TLS certificate of {agency_id} is not issued to {tls_name(agency_id)}"
        )


def armor_card(signed_card: bytes) -> str:
    """Text form of a card for files, mail and copy-paste."""
    body = base64.b64encode(signed_card).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([_ARMOR_BEGIN, *lines, _ARMOR_END]) + "\n"


def dearmor_card(text: str) -> bytes:
    """Inverse of ``armor_card``; raises ``CardError`` on anything else."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _ARMOR_BEGIN or lines[-1] != _ARMOR_END:
        raise CardError("not an armored Liaison agency card")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError as exc:  # binascii.Error, or a character outside ASCII
        raise CardError("the card's base64 body is corrupt") from exc
