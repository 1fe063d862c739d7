"""Card updates: how a node hands its peers its next card over the exchange itself.

A rotation gives a node new keys and so a new card, one ``sequence`` higher.
Its peers pinned the current card after an out-of-band check; the update
carries that trust forward: the new card, self-signed by its own keys, is
named in a ``CardUpdate`` that the *current* card's keys sign (Ed25519, and
ML-DSA-65 if the current card has that key). A peer accepts it only as the
direct successor of the card it pins. docs/PROTOCOL.md section 4.6.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from google.protobuf.message import DecodeError

from liaison.keys.card import PeerCard, parse_card
from liaison.keys.errors import CardError
from liaison.keys.labels import CARD_UPDATE_LABEL, CARD_UPDATE_MLDSA65_CONTEXT, signing_input
from liaison.v1 import envelope_pb2


class CardUpdateError(CardError):
    """A card update that does not verify against the pinned card it claims to replace."""


def make_card_update(
    previous: PeerCard,
    new_signed_card: bytes,
    *,
    signing_key: ed25519.Ed25519PrivateKey,
    mldsa65_key: mldsa.MLDSA65PrivateKey | None = None,
) -> bytes:
    """The ``SignedCardUpdate`` bytes that hand ``previous``'s trust to the new card.

    ``signing_key`` (and ``mldsa65_key``, which a card with an ML-DSA-65 key
    needs) are the private keys of ``previous``.
    """
    if (mldsa65_key is None) != (previous.mldsa65_key is None):
        raise ValueError("the update is signed with ML-DSA-65 exactly when the old card has it")
    update = envelope_pb2.CardUpdate(
        signed_card=new_signed_card, previous_card_sha256=previous.sha256
    ).SerializeToString()
    message = signing_input(CARD_UPDATE_LABEL, update)
    signed = envelope_pb2.SignedCardUpdate(update=update, signature=signing_key.sign(message))
    if mldsa65_key is not None:
        signed.mldsa65_signature = mldsa65_key.sign(message, CARD_UPDATE_MLDSA65_CONTEXT)
    return signed.SerializeToString()


def verify_card_update(signed_update: bytes, *, pinned: PeerCard) -> PeerCard:
    """The new card of a ``SignedCardUpdate`` that succeeds ``pinned``; else ``CardUpdateError``.

    Checked in order: the bytes parse; the Ed25519 signature (and the ML-DSA-65
    one, exactly when ``pinned`` has that key) verifies under ``pinned``'s
    keys; the update names ``pinned`` as its predecessor; the new card passes
    every check of a card (``parse_card``), is for the same agency, has the
    next sequence number, is not older, and keeps an ML-DSA-65 key if
    ``pinned`` had one.
    """
    agency = pinned.agency_id
    try:
        signed = envelope_pb2.SignedCardUpdate.FromString(signed_update)
    except DecodeError:
        raise CardUpdateError(f"the card update of {agency} does not parse") from None
    message = signing_input(CARD_UPDATE_LABEL, signed.update)
    try:
        pinned.signing_key.verify(signed.signature, message)
    except InvalidSignature:
        raise CardUpdateError(f"the card update is not signed by {agency}'s pinned key") from None
    _check_mldsa65(signed, message, pinned)
    try:
        update = envelope_pb2.CardUpdate.FromString(signed.update)
    except DecodeError:
        raise CardUpdateError(f"the card update of {agency} does not parse") from None
    if update.previous_card_sha256 != pinned.sha256:
        raise CardUpdateError(f"the card update of {agency} does not replace the pinned card")
    try:
        card = parse_card(update.signed_card)
    except CardError as error:
        raise CardUpdateError(f"the new card in the update: {error}") from None
    if card.agency_id != agency:
        raise CardUpdateError(f"the card update of {agency} holds a card of another agency")
    if card.sequence != pinned.sequence + 1:
        raise CardUpdateError(
            f"the card update of {agency} holds card {card.sequence}, "
            f"not the successor of pinned card {pinned.sequence}"
        )
    if card.created_at < pinned.created_at:
        raise CardUpdateError(f"the new card of {agency} is older than the pinned one")
    if pinned.mldsa65_key is not None and card.mldsa65_key is None:
        raise CardUpdateError(f"the new card of {agency} drops its ML-DSA-65 key")
    return card


def _check_mldsa65(signed: envelope_pb2.SignedCardUpdate, message: bytes, pinned: PeerCard) -> None:
    agency = pinned.agency_id
    if pinned.mldsa65_key is None:
        if signed.mldsa65_signature:
            raise CardUpdateError(f"the card update of {agency} carries an unexpected signature")
        return
    try:
        pinned.mldsa65_key.verify(signed.mldsa65_signature, message, CARD_UPDATE_MLDSA65_CONTEXT)
    except InvalidSignature:
        raise CardUpdateError(
            f"the card update is not signed by {agency}'s pinned ML-DSA-65 key"
        ) from None
