"""Sealing and opening envelopes, and signing and checking receipts.

Sealing is sign, encrypt, sign: an inner Ed25519 signature over the header
and the content, HPKE encryption of both to the recipient with the header
bound through ``info``, and an outer Ed25519 signature over the header and
the ciphertext. The receiver runs its checks in the fixed order of
docs/PROTOCOL.md; the first that fails names the reject reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.unknown_fields import UnknownFieldSet

from liaison.keys.card import PeerCard
from liaison.keys.content_types import (
    ACKNOWLEDGEMENT_CONTENT_TYPE,
    CARD_UPDATE_CONTENT_TYPE,
    CASE_NOTICE_CONTENT_TYPE,
    FORWARD_CONTENT_TYPE,
    REPLY_CONTENT_TYPE,
)
from liaison.keys.errors import CardError, EnvelopeError, EnvelopeRejected, ReceiptError
from liaison.keys.forward import ForwardedNotice, may_forward, parse_forward
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import is_agency_id, is_message_id, new_message_id
from liaison.keys.labels import (
    CONTENT_SIGNATURE_LABEL,
    ENVELOPE_SIGNATURE_LABEL,
    HPKE_INFO_LABEL,
    RECEIPT_SIGNATURE_LABEL,
    labelled,
    signing_input,
)
from liaison.keys.notice import (
    acknowledgement_problems,
    notice_problems,
    reply_problems,
)
from liaison.keys.rotation import verify_card_update
from liaison.keys.times import (
    datetime_nanos,
    duration_nanos,
    is_valid_timestamp,
    timestamp_nanos,
)
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2, notice_pb2

ENVELOPE_VERSION = 1
SUITE = envelope_pb2.SUITE_ED25519_MLKEM768X25519_HKDFSHA256_AES256GCM
HPKE_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
ED25519_SIGNATURE_LENGTH = 64

R = envelope_pb2.RejectReason


@dataclass(frozen=True)
class EnvelopeLimits:
    """Bounds the receiver enforces on every envelope."""

    max_envelope_bytes: int = 16 * 1024 * 1024
    max_lifetime: dt.timedelta = dt.timedelta(days=30)
    clock_skew: dt.timedelta = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class SealedMessage:
    """What the sender keeps of a sealed notice: the exact envelope bytes and their parts."""

    header: envelope_pb2.EnvelopeHeader
    envelope: bytes
    envelope_sha256: bytes
    content: bytes

    @property
    def message_id(self) -> str:
        return self.header.message_id


@dataclass(frozen=True)
class CheckedEnvelope:
    """An envelope whose header and outer signature have been verified, still sealed."""

    header: envelope_pb2.EnvelopeHeader
    header_bytes: bytes
    ciphertext: bytes
    envelope_sha256: bytes
    # The sender's current pinned card, and the pinned key the envelope is signed with:
    # that card's, or in a grace period the card it replaced.
    sender: PeerCard
    signing_key: ed25519.Ed25519PublicKey
    # The receiver's pins: a forward's originator signature is checked against them.
    trust: TrustStore | None = None


@dataclass(frozen=True)
class OpenedNotice:
    """Decrypted, verified and valid content, with its exact signed bytes.

    A case notice (``notice``), a card update (``card_update``: the sender's new
    card, verified as the successor of its pinned one), an acknowledgement, or a
    reply (whose notice is ``notice``).
    """

    checked: CheckedEnvelope
    content: bytes
    notice: notice_pb2.CaseNotice | None = None
    card_update: PeerCard | None = None
    # An acknowledgement; or for a reply, the reply (``notice`` is then its notice).
    acknowledgement: notice_pb2.Acknowledgement | None = None
    reply: notice_pb2.Reply | None = None
    # A forward (``notice`` is then the forwarded notice with the readers it names here).
    forwarded: ForwardedNotice | None = None

    @property
    def refers_to(self) -> str | None:
        """The message an acknowledgement or a reply answers (the receiver checks it)."""
        if self.acknowledgement is not None:
            return self.acknowledgement.message_id
        if self.reply is not None:
            return self.reply.in_reply_to
        return None


def _timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def hpke_info(header_bytes: bytes) -> bytes:
    """HPKE ``info``: the label, a zero byte and SHA-256 of the exact header bytes."""
    return labelled(HPKE_INFO_LABEL, hashlib.sha256(header_bytes).digest())


def seal_notice(
    notice: notice_pb2.CaseNotice,
    *,
    sender: NodeIdentity,
    recipient: PeerCard,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
    message_id: str | None = None,
) -> SealedMessage:
    """Serialize ``notice`` once and seal it to ``recipient``.

    Raises ``ValueError`` if the notice breaks a rule of ``notice_problems``.
    """
    problems = notice_problems(notice)
    if problems:
        raise ValueError("invalid notice: " + "; ".join(problems))
    return seal_content(
        notice.SerializeToString(),
        content_type=CASE_NOTICE_CONTENT_TYPE,
        sender=sender,
        recipient=recipient,
        ttl=ttl,
        now=now,
        message_id=message_id,
    )


def seal_content(
    content: bytes,
    *,
    content_type: str,
    sender: NodeIdentity,
    recipient: PeerCard,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
    message_id: str | None = None,
) -> SealedMessage:
    """Sign, encrypt and sign ``content`` (already serialized) for ``recipient``."""
    created = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    header = envelope_pb2.EnvelopeHeader(
        version=ENVELOPE_VERSION,
        suite=SUITE,
        message_id=message_id or new_message_id(),
        sender=sender.agency_id,
        recipient=recipient.agency_id,
        created_at=_timestamp(created),
        expires_at=_timestamp(created + ttl),
        sender_signing_key_id=sender.card.signing_key_id,
        recipient_encryption_key_id=recipient.encryption_key_id,
        content_type=content_type,
    )
    header_bytes = header.SerializeToString()
    inner = sender.signing_key.sign(signing_input(CONTENT_SIGNATURE_LABEL, header_bytes, content))
    plaintext = envelope_pb2.SignedContent(content=content, signature=inner).SerializeToString()
    ciphertext = HPKE_SUITE.encrypt(
        plaintext, recipient.encryption_key, info=hpke_info(header_bytes)
    )
    outer = sender.signing_key.sign(
        signing_input(ENVELOPE_SIGNATURE_LABEL, header_bytes, ciphertext)
    )
    envelope = envelope_pb2.SealedEnvelope(
        header=header_bytes, ciphertext=ciphertext, signature=outer
    ).SerializeToString()
    return SealedMessage(header, envelope, hashlib.sha256(envelope).digest(), content)


def check_envelope(
    envelope: bytes,
    *,
    receiver: NodeIdentity,
    trust: TrustStore,
    authenticated_peer: str | None,
    now: dt.datetime,
    limits: EnvelopeLimits,
) -> CheckedEnvelope:
    """The checks before the replay check and decryption (PROTOCOL.md, receiver checks).

    ``authenticated_peer`` is the agency id bound to the mutual-TLS client
    certificate of the connection. Raises ``EnvelopeRejected``.
    """
    if len(envelope) > limits.max_envelope_bytes:
        raise EnvelopeRejected(R.REJECT_REASON_TOO_LARGE, f"{len(envelope)} bytes")
    sealed = _parse(envelope, limits)
    header = sealed.header
    claimed = {"message_id": header.message_id, "sender": header.sender}

    def reject(reason: envelope_pb2.RejectReason.ValueType, detail: str) -> EnvelopeRejected:
        return EnvelopeRejected(reason, detail, **claimed)

    if header.version != ENVELOPE_VERSION or header.suite != SUITE:
        raise reject(R.REJECT_REASON_UNSUPPORTED_VERSION, f"version {header.version}")
    sender = trust.peer(header.sender)
    if sender is None:
        raise reject(R.REJECT_REASON_UNKNOWN_SENDER, "sender is not a pinned peer")
    if trust.is_revoked(header.sender):  # check 5a
        raise reject(R.REJECT_REASON_SENDER_REVOKED, "sender's pin is revoked on this node")
    if authenticated_peer != header.sender:
        raise reject(R.REJECT_REASON_SENDER_MISMATCH, f"connection is from {authenticated_peer}")
    if header.recipient != receiver.agency_id:
        raise reject(R.REJECT_REASON_WRONG_RECIPIENT, f"addressed to {_shown(header.recipient)}")
    signing_key = trust.signing_key(header.sender, header.sender_signing_key_id)
    if signing_key is None:
        raise reject(R.REJECT_REASON_UNKNOWN_SIGNING_KEY, "not the sender's pinned key")
    try:
        signing_key.verify(
            sealed.signature,
            signing_input(ENVELOPE_SIGNATURE_LABEL, sealed.header_bytes, sealed.ciphertext),
        )
    except InvalidSignature:
        raise reject(R.REJECT_REASON_BAD_OUTER_SIGNATURE, "outer signature fails") from None
    # Exact comparisons in nanoseconds: a datetime would drop a Timestamp's last digits.
    now_nanos = datetime_nanos(now)
    if now_nanos >= timestamp_nanos(header.expires_at):
        raise reject(R.REJECT_REASON_EXPIRED, "envelope has expired")
    if timestamp_nanos(header.created_at) > now_nanos + duration_nanos(limits.clock_skew):
        raise reject(R.REJECT_REASON_NOT_YET_VALID, "created in the future")
    return CheckedEnvelope(
        header=header,
        header_bytes=sealed.header_bytes,
        ciphertext=sealed.ciphertext,
        envelope_sha256=hashlib.sha256(envelope).digest(),
        sender=sender,
        signing_key=signing_key,
        trust=trust,
    )


def _shown(agency_id: str) -> str:
    """A claimed agency id as a reject detail may hold it: as is only if well-formed."""
    return agency_id if is_agency_id(agency_id) else _digest_of(agency_id)


def _digest_of(text: str) -> str:
    """Names unchecked header text in a reject detail without repeating it."""
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}…"


@dataclass(frozen=True)
class _Parsed:
    """The fields of a ``SealedEnvelope``, each copied out of the parsed message once.

    Reading a bytes field of a parsed protobuf copies it; a 16 MiB ciphertext
    read three times is 48 MiB of garbage, so the parts are read here and the
    parsed message is dropped.
    """

    header_bytes: bytes
    ciphertext: bytes
    signature: bytes
    header: envelope_pb2.EnvelopeHeader


def _parse(envelope: bytes, limits: EnvelopeLimits) -> _Parsed:
    try:
        sealed = envelope_pb2.SealedEnvelope.FromString(envelope)
        if len(UnknownFieldSet(sealed)):
            # No signature covers them (only the envelope's digest does): refused, not kept.
            raise EnvelopeRejected(R.REJECT_REASON_MALFORMED_ENVELOPE, "holds unknown fields")
        parsed = _Parsed(
            header_bytes=sealed.header,
            ciphertext=sealed.ciphertext,
            signature=sealed.signature,
            header=envelope_pb2.EnvelopeHeader.FromString(sealed.header),
        )
    except DecodeError:
        raise EnvelopeRejected(R.REJECT_REASON_MALFORMED_ENVELOPE, "does not parse") from None
    del sealed
    header = parsed.header
    claimed = {"message_id": header.message_id, "sender": header.sender}
    problem = _header_problem(parsed, limits)
    if problem:
        raise EnvelopeRejected(R.REJECT_REASON_MALFORMED_ENVELOPE, problem, **claimed)
    return parsed


def _header_problem(sealed: _Parsed, limits: EnvelopeLimits) -> str | None:
    header = sealed.header
    if not is_message_id(header.message_id):
        return "message id is not a UUIDv7"
    if not header.sender or not header.recipient:
        return "sender or recipient missing"
    if not header.HasField("created_at") or not header.HasField("expires_at"):
        return "created or expiry time missing"
    if not is_valid_timestamp(header.created_at) or not is_valid_timestamp(header.expires_at):
        return "a time is not a valid Timestamp"
    lifetime = timestamp_nanos(header.expires_at) - timestamp_nanos(header.created_at)
    if lifetime <= 0 or lifetime > duration_nanos(limits.max_lifetime):
        return "lifetime is not within limits"
    if len(sealed.signature) != ED25519_SIGNATURE_LENGTH:
        return "outer signature has the wrong length"
    if len(sealed.ciphertext) <= HPKE_SUITE_OVERHEAD:
        return "ciphertext is too short"
    return None


# enc (1120 bytes for ML-KEM-768+X25519) plus the 16-byte AES-GCM tag.
HPKE_SUITE_OVERHEAD = hpke.KEM.MLKEM768_X25519.enc_length() + 16


def open_checked(
    checked: CheckedEnvelope,
    *,
    receiver: NodeIdentity,
    decryption_keys: Mapping[str, hpke.MLKEM768X25519PrivateKey] | None = None,
) -> OpenedNotice:
    """The checks after the replay check: decrypt, inner signature, content type, content.

    ``decryption_keys`` are the receiver's keys by encryption key id (after a
    rotation, retiring ones beside the current); by default its current key only.
    Raises ``EnvelopeRejected``.
    """
    header = checked.header

    def reject(reason: envelope_pb2.RejectReason.ValueType, detail: str) -> EnvelopeRejected:
        return EnvelopeRejected(reason, detail, message_id=header.message_id, sender=header.sender)

    if decryption_keys is None:
        decryption_keys = {receiver.card.encryption_key_id: receiver.decryption_key}
    decryption_key = decryption_keys.get(header.recipient_encryption_key_id)
    if decryption_key is None:
        raise reject(R.REJECT_REASON_UNKNOWN_ENCRYPTION_KEY, "sealed to a key this node lacks")
    try:
        plaintext = HPKE_SUITE.decrypt(
            checked.ciphertext, decryption_key, info=hpke_info(checked.header_bytes)
        )
    except (InvalidTag, ValueError):
        raise reject(R.REJECT_REASON_DECRYPTION_FAILED, "HPKE open fails") from None
    try:
        signed = envelope_pb2.SignedContent.FromString(plaintext)
    except DecodeError:
        raise reject(R.REJECT_REASON_MALFORMED_CONTENT, "signed content does not parse") from None
    # Each field read once, and the copies dropped: this runs on 16 MiB notices.
    content, signature = signed.content, signed.signature
    del plaintext, signed
    try:
        checked.signing_key.verify(
            signature, signing_input(CONTENT_SIGNATURE_LABEL, checked.header_bytes, content)
        )
    except InvalidSignature:
        raise reject(R.REJECT_REASON_BAD_INNER_SIGNATURE, "inner signature fails") from None
    return _open_content(checked, content, reject)


Reject = Callable[[envelope_pb2.RejectReason.ValueType, str], EnvelopeRejected]


def _open_content(checked: CheckedEnvelope, content: bytes, reject: Reject) -> OpenedNotice:
    """Checks 17 to 19 (PROTOCOL.md section 7): the content type and its own rules."""
    header = checked.header
    if header.content_type == CARD_UPDATE_CONTENT_TYPE:
        try:
            card = verify_card_update(content, pinned=checked.sender)
        except CardError as error:
            raise reject(R.REJECT_REASON_INVALID_CARD_UPDATE, str(error)) from None
        return OpenedNotice(checked, content, card_update=card)
    if header.content_type == ACKNOWLEDGEMENT_CONTENT_TYPE:
        ack = _parsed(
            notice_pb2.Acknowledgement,
            content,
            acknowledgement_problems,
            R.REJECT_REASON_INVALID_ACKNOWLEDGEMENT,
            reject,
        )
        return OpenedNotice(checked, content, acknowledgement=ack)
    if header.content_type == REPLY_CONTENT_TYPE:
        reply = _parsed(
            notice_pb2.Reply, content, reply_problems, R.REJECT_REASON_INVALID_NOTICE, reject
        )
        return OpenedNotice(checked, content, notice=reply.notice, reply=reply)
    if header.content_type == FORWARD_CONTENT_TYPE:
        forwarded = _forwarded(checked, content, reject)
        return OpenedNotice(checked, content, notice=forwarded.shown(), forwarded=forwarded)
    if header.content_type != CASE_NOTICE_CONTENT_TYPE:
        raise reject(
            R.REJECT_REASON_UNSUPPORTED_CONTENT_TYPE,
            f"content type {_digest_of(header.content_type)}",
        )
    try:
        notice = notice_pb2.CaseNotice.FromString(content)
    except DecodeError:
        raise reject(R.REJECT_REASON_INVALID_NOTICE, "notice does not parse") from None
    problems = notice_problems(notice)
    if problems:
        raise reject(R.REJECT_REASON_INVALID_NOTICE, "; ".join(problems))
    return OpenedNotice(checked, content, notice=notice)


def _forwarded(checked: CheckedEnvelope, content: bytes, reject: Reject) -> ForwardedNotice:
    """A forward's checks (section 10.5): its rules, the originator's consent for a
    notice it controls, and the originator's signature under a key the receiver pins."""
    header = checked.header
    try:
        forward = notice_pb2.Forward.FromString(content)
    except DecodeError:
        raise reject(R.REJECT_REASON_INVALID_FORWARD, "Forward does not parse") from None
    forwarded, problems = parse_forward(forward, forwarder=header.sender)
    if forwarded is None:
        raise reject(R.REJECT_REASON_INVALID_FORWARD, "; ".join(problems))
    if forwarded.originator == header.recipient:
        raise reject(R.REJECT_REASON_INVALID_FORWARD, "forwards the receiver's own notice")
    if not may_forward(forwarded.notice, header.recipient):
        raise reject(
            R.REJECT_REASON_FORWARD_NOT_ALLOWED,
            "the originator did not name the receiver in forwardable_to",
        )
    verified = forwarded.verified_by(checked.trust) if checked.trust is not None else None
    if verified is False:
        raise reject(
            R.REJECT_REASON_INVALID_FORWARD,
            "the originator's signature fails, or its key is none pinned for the originator",
        )
    return forwarded


def reopen_signed_content(
    envelope: bytes, decryption_keys: Mapping[str, hpke.MLKEM768X25519PrivateKey]
) -> tuple[bytes, bytes, bytes]:
    """A stored envelope this node received, opened again: its header bytes, content
    bytes and inner signature, exactly as the sender sealed them (what a forward carries).

    Raises ``EnvelopeError`` if the envelope does not parse or its key is gone (a
    decryption key is destroyed after a rotation once all sealed to it has expired).
    """
    try:
        sealed = envelope_pb2.SealedEnvelope.FromString(envelope)
        header = envelope_pb2.EnvelopeHeader.FromString(sealed.header)
    except DecodeError:
        raise EnvelopeError("the stored envelope does not parse") from None
    key = decryption_keys.get(header.recipient_encryption_key_id)
    if key is None:
        raise EnvelopeError(
            "the stored envelope was sealed to a decryption key this node has destroyed"
        )
    try:
        plaintext = HPKE_SUITE.decrypt(sealed.ciphertext, key, info=hpke_info(sealed.header))
        signed = envelope_pb2.SignedContent.FromString(plaintext)
    except (InvalidTag, ValueError, DecodeError):
        raise EnvelopeError("the stored envelope does not open") from None
    return sealed.header, signed.content, signed.signature


Parsed = TypeVar("Parsed", bound=ProtoMessage)


def _parsed(
    kind: type[Parsed],
    content: bytes,
    problems_of: Callable[[Parsed], list[str]],
    reason: envelope_pb2.RejectReason.ValueType,
    reject: Reject,
) -> Parsed:
    """``content`` parsed as ``kind`` and free of ``problems_of``; else ``reason``."""
    try:
        message = kind.FromString(content)
    except DecodeError:
        raise reject(reason, f"{kind.__name__} does not parse") from None
    problems = problems_of(message)
    if problems:
        raise reject(reason, "; ".join(problems))
    return message


def issue_receipt(
    *,
    receiver: NodeIdentity,
    message_id: str,
    envelope_sha256: bytes,
    sender: str,
    status: envelope_pb2.ReceiptStatus.ValueType,
    reason: envelope_pb2.RejectReason.ValueType = R.REJECT_REASON_UNSPECIFIED,
    now: dt.datetime,
    log_index: int | None = None,
) -> bytes:
    """Serialize and sign a receipt; returns the ``SignedReceipt`` bytes.

    ``log_index`` is the leaf index of the receiver's audit event for the envelope."""
    receipt = envelope_pb2.Receipt(
        message_id=message_id,
        envelope_sha256=envelope_sha256,
        sender=sender,
        receiver=receiver.agency_id,
        received_at=_timestamp(now),
        status=status,
        reason=reason,
        receiver_signing_key_id=receiver.card.signing_key_id,
        log_index=log_index,
    )
    body = receipt.SerializeToString()
    signature = receiver.signing_key.sign(signing_input(RECEIPT_SIGNATURE_LABEL, body))
    return envelope_pb2.SignedReceipt(receipt=body, signature=signature).SerializeToString()


def verify_receipt(
    signed_receipt: bytes,
    *,
    issuer: PeerCard,
    message_id: str,
    sender: str,
    envelope_sha256: bytes,
    previous: PeerCard | None = None,
) -> envelope_pb2.Receipt:
    """Verify ``issuer``'s receipt for one envelope; raises ``ReceiptError``.

    Checks the signature under the issuer's pinned key (or under ``previous``'s,
    the card the issuer replaced, in its grace period: the issuer signs with
    the card it knows we pin), then that the receipt names this envelope
    (SHA-256 of its bytes, message id and sender), the issuer and that key. A
    REJECTED receipt may leave message id and sender empty: the receiver could
    not read them from the envelope (too large, unparseable).
    """
    try:
        outer = envelope_pb2.SignedReceipt.FromString(signed_receipt)
    except DecodeError as exc:
        raise ReceiptError(f"receipt from {issuer.agency_id} does not parse") from exc
    message = signing_input(RECEIPT_SIGNATURE_LABEL, outer.receipt)
    signer = next(
        (card for card in (issuer, previous) if card and _verifies(card, outer.signature, message)),
        None,
    )
    if signer is None:
        raise ReceiptError(f"receipt signature of {issuer.agency_id} fails")
    try:
        receipt = envelope_pb2.Receipt.FromString(outer.receipt)
    except DecodeError as exc:
        raise ReceiptError(f"receipt from {issuer.agency_id} does not parse") from exc
    expected = {
        "receiver": issuer.agency_id,
        "sender": sender,
        "message_id": message_id,
        "receiver_signing_key_id": signer.signing_key_id,
    }
    unread = receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    for name, value in expected.items():
        actual = getattr(receipt, name)
        if actual != value and not (unread and name in ("sender", "message_id") and not actual):
            # The peer's value is not repeated: this message reaches logs and the audit trail.
            raise ReceiptError(f"receipt names another {name.replace('_', ' ')} than {value}")
    if receipt.envelope_sha256 != envelope_sha256:
        raise ReceiptError("receipt is for other envelope bytes")
    if receipt.status not in (
        envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        envelope_pb2.RECEIPT_STATUS_DUPLICATE,
        envelope_pb2.RECEIPT_STATUS_REJECTED,
    ):
        raise ReceiptError(f"receipt has unknown status {receipt.status}")
    if receipt.reason not in R.values() or (receipt.reason == 0) == unread:
        raise ReceiptError(f"receipt has reason {receipt.reason} for its status")
    if not is_valid_timestamp(receipt.received_at):
        raise ReceiptError("receipt's received time is not a valid Timestamp")
    return receipt


def _verifies(card: PeerCard, signature: bytes, message: bytes) -> bool:
    try:
        card.signing_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
