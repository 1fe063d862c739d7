"""Writes the known-answer vectors in this folder.

    python -m tests.vectors.generate

``derivations.json`` is deterministic (fixed keys, Ed25519 is deterministic):
``tests/test_vectors.py`` recomputes every value in it, so a change in a label,
a key id, a signed byte string or an ML-KEM key derivation fails the tests.
The envelope vectors in ``envelopes/`` contain HPKE ciphertexts, whose
ephemeral randomness the ``cryptography`` API does not let us fix;
regenerating them gives other bytes with the same expectations. They are
written once and kept: only vectors whose file does not exist yet are written.
The card derivations under ``cards`` hold two inputs that cannot be recomputed
(a TLS certificate, whose ECDSA signature is randomized, and a hedged ML-DSA-65
signature); they are kept from the existing file, and everything derived from
them is recomputed. The format is in docs/PROTOCOL.md section 12.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem

from liaison.keys import labels
from liaison.keys.certs import IssuedCertificate
from liaison.keys.content_types import (
    ACKNOWLEDGEMENT_CONTENT_TYPE,
    CARD_UPDATE_CONTENT_TYPE,
    FORWARD_CONTENT_TYPE,
)
from liaison.keys.envelope import issue_receipt, reopen_signed_content, seal_notice
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import mldsa65_key_id
from liaison.keys.rotation import make_card_update
from liaison.v1 import envelope_pb2, notice_pb2
from tests.forge import Forge, assemble
from tests.notices import complete, sample_notice
from tests.vectors.keys import OTHER, RECEIVER, SENDER

HERE = Path(__file__).resolve().parent
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
MESSAGE_ID = "019ac9f0-8000-7000-8000-000000000001"
# The message the acknowledgement vectors answer.
ANSWERED_ID = "019ac9f0-7000-7000-8000-0000000000aa"
NANOS = 1_000_000_000
MAX_LIFETIME_NANOS = 30 * 86_400 * NANOS
CLOCK_SKEW_NANOS = 300 * NANOS
# Offset of the 64-byte seed in the PKCS#8 DER of an ML-KEM-768 private key (PROTOCOL.md B).
MLKEM_PKCS8_SEED_OFFSET = 22
# The sender's ML-DSA-65 key of the card vectors, as its 32-byte seed.
SENDER_MLDSA65_SEED = (b"sender-mldsa65;" * 3)[:32]


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def derivations(kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """The derivations; ``kept``, the current file, supplies the card vectors' fixed inputs."""
    sender, receiver = SENDER.identity(), RECEIVER.identity()
    parts = [b"header bytes", b"content bytes"]
    receipt = envelope_pb2.SignedReceipt.FromString(
        issue_receipt(
            receiver=receiver,
            message_id=MESSAGE_ID,
            envelope_sha256=bytes(32),
            sender=sender.agency_id,
            status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
            now=NOW,
        )
    )
    return {
        "description": "Deterministic derivations: key ids, signed byte strings, a receipt.",
        "keys": {"sender": SENDER.to_json(), "receiver": RECEIVER.to_json()},
        "key_ids": {
            "sender_signing_key_id": sender.card.signing_key_id,
            "sender_encryption_key_id": sender.card.encryption_key_id,
            "receiver_signing_key_id": receiver.card.signing_key_id,
            "receiver_encryption_key_id": receiver.card.encryption_key_id,
        },
        "signing_inputs": [
            {
                "label": label.decode(),
                "parts": [p.hex() for p in parts],
                "signing_input": labels.signing_input(label, *parts).hex(),
                "sender_signature": sender.signing_key.sign(
                    labels.signing_input(label, *parts)
                ).hex(),
            }
            for label in (
                labels.CONTENT_SIGNATURE_LABEL,
                labels.ENVELOPE_SIGNATURE_LABEL,
                labels.RECEIPT_SIGNATURE_LABEL,
                labels.CARD_SIGNATURE_LABEL,
            )
        ],
        "hpke_info": {
            "header": b"header bytes".hex(),
            "info": labels.labelled(
                labels.HPKE_INFO_LABEL, hashlib.sha256(b"header bytes").digest()
            ).hex(),
        },
        "receipt": {
            "receipt": receipt.receipt.hex(),
            "signature": receipt.signature.hex(),
        },
        "mlkem768": [mlkem768_derivation(keys.mlkem768_seed) for keys in (SENDER, RECEIVER)],
        "cards": card_derivations((kept or {}).get("cards")),
        "card_updates": card_update_derivations((kept or {}).get("cards")),
    }


# The sender's next signing key in the card-update vectors, as its Ed25519 seed.
NEXT_ED25519_SEED = (b"sender-next-ed25519;" * 2)[:32]
NEXT_CREATED = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def card_update_derivations(kept: dict[str, Any] | None) -> dict[str, Any]:
    """The sender's classic card (of ``cards``) rotated to card 1 with a new signing key,
    the update that links them, and bent updates a receiver must refuse (PROTOCOL.md 4.6)."""
    if kept is None:
        tls_certificate = SENDER.identity().tls.certificate.public_bytes(serialization.Encoding.DER)
    else:
        tls_certificate = bytes.fromhex(kept["tls_certificate"])
    old = card_identity(tls_certificate, None)
    new = dataclasses.replace(
        old,
        signing_key=ed25519.Ed25519PrivateKey.from_private_bytes(NEXT_ED25519_SEED),
        sequence=1,
        created_at=NEXT_CREATED,
    )
    update = make_card_update(old.card, new.card.signed_card, signing_key=old.signing_key)
    signed = envelope_pb2.SignedCardUpdate.FromString(update)
    skipped = dataclasses.replace(new, sequence=2)
    bent = {
        "signed-by-the-new-key": make_card_update(
            old.card, new.card.signed_card, signing_key=new.signing_key
        ),
        "skips-a-sequence-number": make_card_update(
            old.card, skipped.card.signed_card, signing_key=old.signing_key
        ),
        "names-another-predecessor": envelope_pb2.SignedCardUpdate(
            update=envelope_pb2.CardUpdate(
                signed_card=new.card.signed_card, previous_card_sha256=bytes(32)
            ).SerializeToString(),
        ).SerializeToString(),
    }
    return {
        "description": (
            "The classic card of `cards` (card 0) rotated to card 1: a new Ed25519 key "
            "from next_ed25519_seed, created at next_created. Ed25519 is deterministic: "
            "every byte here is recomputed. `bent` updates must be refused."
        ),
        "next_ed25519_seed": NEXT_ED25519_SEED.hex(),
        "next_created": _iso(NEXT_CREATED),
        "pinned_card": old.card.signed_card.hex(),
        "next_card": new.card.signed_card.hex(),
        "next_fingerprint": new.card.fingerprint,
        "update": update.hex(),
        "signing_input": labels.signing_input(labels.CARD_UPDATE_LABEL, signed.update).hex(),
        "bent": {name: value.hex() for name, value in bent.items()},
    }


def card_identity(
    tls_certificate: bytes, mldsa65_key: mldsa.MLDSA65PrivateKey | None, signature: bytes = b""
) -> NodeIdentity:
    """The sender's identity with a fixed TLS certificate (only its DER is in the card)."""
    sender = SENDER.identity()
    certificate = x509.load_der_x509_certificate(tls_certificate)
    return NodeIdentity(
        agency_id=sender.agency_id,
        name=sender.name,
        endpoint=sender.endpoint,
        created_at=sender.created_at,
        signing_key=sender.signing_key,
        kem_mlkem=sender.kem_mlkem,
        kem_x25519=sender.kem_x25519,
        tls=IssuedCertificate(sender.tls.key, certificate),
        mldsa65_key=mldsa65_key,
        card_mldsa65_signature=signature,
    )


def card_derivations(kept: dict[str, Any] | None) -> dict[str, Any]:
    """The sender's card without and with an ML-DSA-65 key (PROTOCOL.md 4, 11)."""
    if kept is None:
        tls_certificate = SENDER.identity().tls.certificate.public_bytes(serialization.Encoding.DER)
        kept_signature = b""
    else:
        tls_certificate = bytes.fromhex(kept["tls_certificate"])
        kept_signature = bytes.fromhex(kept["post_quantum"]["mldsa65_signature"])
    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(SENDER_MLDSA65_SEED)
    classic = card_identity(tls_certificate, None).card
    post_quantum = card_identity(tls_certificate, key, kept_signature).card
    outer = envelope_pb2.SignedCard.FromString(post_quantum.signed_card)
    message = labels.signing_input(labels.CARD_SIGNATURE_LABEL, outer.card)
    public = key.public_key()

    def verifies(context: bytes | None) -> bool:
        try:
            public.verify(outer.mldsa65_signature, message, context)
        except InvalidSignature:
            return False
        return True

    return {
        "description": (
            "The sender's card (name, endpoint and creation time of tests/vectors/keys.py, "
            "this TLS certificate) without and with an ML-DSA-65 key. ML-DSA-65 signing is "
            "randomized: its signature is a fixed input, checked by verification."
        ),
        "tls_certificate": tls_certificate.hex(),
        "mldsa65_seed": SENDER_MLDSA65_SEED.hex(),
        "mldsa65_public": public.public_bytes_raw().hex(),
        "mldsa65_key_id": mldsa65_key_id(public.public_bytes_raw()),
        "classic": {
            "signed_card": classic.signed_card.hex(),
            "fingerprint": classic.fingerprint,
        },
        "post_quantum": {
            "signed_card": post_quantum.signed_card.hex(),
            "fingerprint": post_quantum.fingerprint,
            "signing_input": message.hex(),
            "mldsa65_signature": outer.mldsa65_signature.hex(),
            "verify": [
                {"context": context.decode(), "expect": verifies(context)}
                for context in (
                    labels.CARD_MLDSA65_CONTEXT,
                    b"",
                    labels.CARD_SIGNATURE_LABEL,
                )
            ],
        },
    }


def mlkem768_derivation(seed: bytes) -> dict[str, Any]:
    """The public key derived from a 64-byte seed d || z, and the PKCS#8 that stores it."""
    key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert pkcs8[MLKEM_PKCS8_SEED_OFFSET:] == seed
    return {
        "seed": seed.hex(),
        "public_key": key.public_key().public_bytes_raw().hex(),
        "pkcs8_der": pkcs8.hex(),
        "pkcs8_seed_offset": MLKEM_PKCS8_SEED_OFFSET,
    }


def _notice(**extra: Any) -> notice_pb2.CaseNotice:
    notice = complete(
        sample_notice("VEC-1", attachment=extra.pop("attachment", None)), SENDER.agency_id
    )
    for key, value in extra.items():
        setattr(notice, key, value)
    return notice


def envelope_vectors() -> dict[str, dict[str, Any]]:
    sender, receiver, other = SENDER.identity(), RECEIVER.identity(), OTHER.identity()
    base = Forge(
        sender=sender, recipient=receiver.card, notice=_notice(), now=NOW, message_id=MESSAGE_ID
    )
    vectors: dict[str, tuple[str, Forge | bytes, dict[str, Any], Inputs]] = {}

    def accept(name: str, description: str, forge: Forge, **inputs: Any) -> None:
        vectors[name] = (
            description,
            forge,
            {
                "result": "accept",
                "content": (
                    forge.content if forge.content is not None else forge.notice.SerializeToString()
                ).hex(),
            },
            inputs,
        )

    def reject(
        name: str, description: str, envelope: Forge | bytes, reason: str, **inputs: Any
    ) -> None:
        vectors[name] = (description, envelope, {"result": "reject", "reason": reason}, inputs)

    accept("accept-basic", "A valid case notice.", base)
    with_attachment = _notice(attachment=b"\x00\x01attachment bytes")
    with_attachment.references.append("019ac9f0-7000-7000-8000-000000000000")
    accept(
        "accept-attachment",
        "A notice with an attachment and a reference.",
        base.but(notice=with_attachment, message_id="019ac9f0-8000-7000-8000-000000000002"),
    )

    header, ciphertext, signature = base.parts()
    reject(
        "reject-outer-signature",
        "Outer signature with one bit flipped.",
        assemble(header, ciphertext, signature[:-1] + bytes([signature[-1] ^ 1])),
        "BAD_OUTER_SIGNATURE",
    )
    flipped = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    reject(
        "reject-ciphertext",
        "Ciphertext bit flipped, outer signature made again by the sender.",
        assemble(header, flipped, base.sign_outer(header, flipped)),
        "DECRYPTION_FAILED",
    )
    reject(
        "reject-inner-signature",
        "Content signed by a key other than the sender's.",
        base.but(inner_key=other.signing_key),
        "BAD_INNER_SIGNATURE",
    )
    reject(
        "reject-wrong-recipient",
        "Sealed to another agency.",
        base.but(recipient=other.card),
        "WRONG_RECIPIENT",
    )
    reject(
        "reject-expired",
        "Expired one hour before the receiver's time.",
        base.but(now=NOW - dt.timedelta(hours=2)),
        "EXPIRED",
    )
    reject(
        "reject-not-yet-valid",
        "Created an hour after the receiver's time.",
        base.but(now=NOW + dt.timedelta(hours=1)),
        "NOT_YET_VALID",
    )
    reject(
        "reject-signing-key",
        "Header names a signing key the sender's card does not hold.",
        base.but(header_fields={"sender_signing_key_id": "00" * 16}),
        "UNKNOWN_SIGNING_KEY",
    )
    reject(
        "reject-version",
        "Envelope version 2.",
        base.but(header_fields={"version": 2}),
        "UNSUPPORTED_VERSION",
    )
    reject(
        "reject-unknown-sender",
        "Sender the receiver has not pinned.",
        base.but(sender=other),
        "UNKNOWN_SENDER",
    )
    bad = _notice(attachment=b"evidence")
    bad.attachments[0].content = b"other evidence"
    reject(
        "reject-notice",
        "Attachment does not match its SHA-256.",
        base.but(notice=bad),
        "INVALID_NOTICE",
    )
    reject("reject-malformed", "Not a SealedEnvelope.", b"\xff\xff\xff", "MALFORMED_ENVELOPE")
    conformance_vectors(base, accept, reject)

    out = {}
    for name, (description, source, expect, inputs) in vectors.items():
        envelope = source.build() if isinstance(source, Forge) else source
        peer = OTHER.agency_id if name == "reject-unknown-sender" else SENDER.agency_id
        vector: dict[str, Any] = {
            "description": description,
            "receiver": RECEIVER.to_json(),
            "trusted_senders": [SENDER.public_json()]
            + ([OTHER.public_json()] if inputs.get("originator_pinned") else []),
            "authenticated_peer": inputs.get("authenticated_peer", peer),
            "now": _iso(inputs.get("now", NOW)),
            "envelope": base64.b64encode(envelope).decode(),
        }
        if "limits" in inputs:
            vector["limits"] = inputs["limits"](envelope)
        if "stored" in inputs:
            vector["stored"] = inputs["stored"](envelope)
        for member in ("sent", "received"):
            if member in inputs:
                vector[member] = inputs[member](envelope)
        given = inputs.get("expect")
        out[name] = {**vector, "expect": given(envelope) if given is not None else expect}
    return out


Inputs = dict[str, Any]
Accept = Callable[..., None]
Reject = Callable[..., None]


def _times(
    created: tuple[int, int], expires: tuple[int, int]
) -> Callable[[envelope_pb2.EnvelopeHeader], None]:
    def change(header: envelope_pb2.EnvelopeHeader) -> None:
        header.created_at.seconds, header.created_at.nanos = created
        header.expires_at.seconds, header.expires_at.nanos = expires

    return change


def _after(start: tuple[int, int], nanos: int) -> tuple[int, int]:
    return divmod(start[0] * NANOS + start[1] + nanos, NANOS)


def _clear(field: str) -> Callable[[envelope_pb2.EnvelopeHeader], None]:
    return lambda header: header.ClearField(field)  # type: ignore[arg-type]


def _stored_receipt(envelope_sha256: bytes) -> str:
    """The ACCEPTED receipt the receiver issued when it stored the envelope, a minute ago."""
    receipt = issue_receipt(
        receiver=RECEIVER.identity(),
        message_id=MESSAGE_ID,
        envelope_sha256=envelope_sha256,
        sender=SENDER.agency_id,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        now=NOW - dt.timedelta(minutes=1),
    )
    return base64.b64encode(receipt).decode()


def _stored(same_bytes: bool) -> Callable[[bytes], list[dict[str, str]]]:
    """The receiver stored (sender, MESSAGE_ID) before: these envelope bytes, or others."""

    def stored(envelope: bytes) -> list[dict[str, str]]:
        digest = hashlib.sha256(envelope if same_bytes else b"other bytes").digest()
        return [
            {
                "sender": SENDER.agency_id,
                "message_id": MESSAGE_ID,
                "envelope_sha256": digest.hex(),
                "receipt": _stored_receipt(digest),
            }
        ]

    return stored


def conformance_vectors(base: Forge, accept: Accept, reject: Reject) -> None:
    """Vectors for every reject reason, each header check, the exact-Timestamp
    boundaries, unknown envelope fields, replays and duplicates (issue 6)."""
    created = (int(NOW.timestamp()), 0)  # the forge writes NOW in whole seconds
    header, ciphertext, signature = base.parts()
    size = len(base.build())

    accept(
        "accept-size-at-limit",
        f"max_envelope_bytes is the envelope's size, {size} bytes.",
        base,
        limits=lambda envelope: {"max_envelope_bytes": len(envelope)},
    )
    reject(
        "reject-too-large",
        "max_envelope_bytes is one byte less than the envelope.",
        base,
        "TOO_LARGE",
        limits=lambda envelope: {"max_envelope_bytes": len(envelope) - 1},
    )
    reject(
        "reject-sender-mismatch",
        "A valid envelope from the sender, arriving on another pinned peer's connection.",
        base,
        "SENDER_MISMATCH",
        authenticated_peer=OTHER.agency_id,
    )
    reject(
        "reject-sender-mismatch-no-peer",
        "A valid envelope with no authenticated peer.",
        base,
        "SENDER_MISMATCH",
        authenticated_peer=None,
    )
    reject(
        "reject-unknown-encryption-key",
        "Header names an encryption key id the receiver does not hold.",
        base.but(header_fields={"recipient_encryption_key_id": "11" * 16}),
        "UNKNOWN_ENCRYPTION_KEY",
    )
    reject(
        "reject-malformed-content",
        "The HPKE plaintext is not a SignedContent.",
        base.but(plaintext=b"\xff\xff\xff"),
        "MALFORMED_CONTENT",
    )
    reject(
        "reject-unsupported-content-type",
        "Content type application/x-other, otherwise valid.",
        base.but(header_fields={"content_type": "application/x-other"}),
        "UNSUPPORTED_CONTENT_TYPE",
    )
    reject(
        "reject-invalid-acknowledgement",
        "Content type acknowledgement, but the content is not an Acknowledgement.",
        base.but(
            header_fields={"content_type": ACKNOWLEDGEMENT_CONTENT_TYPE}, content=b"\xff\xff\xff"
        ),
        "INVALID_ACKNOWLEDGEMENT",
    )
    ack = notice_pb2.Acknowledgement(message_id=ANSWERED_ID, status=notice_pb2.ACK_STATUS_READ)
    ack.at.FromDatetime(NOW)
    acked = base.but(
        header_fields={"content_type": ACKNOWLEDGEMENT_CONTENT_TYPE},
        content=ack.SerializeToString(),
    )
    sent_to_sender = [{"message_id": ANSWERED_ID, "recipient": SENDER.agency_id}]
    accept(
        "accept-acknowledgement",
        "A read notification of a message the receiver sent to the sender.",
        acked,
        sent=lambda _envelope: sent_to_sender,
    )
    reject(
        "reject-unknown-message",
        "An acknowledgement of a message the receiver does not hold.",
        acked,
        "UNKNOWN_MESSAGE",
    )
    reject(
        "reject-not-the-recipient",
        "An acknowledgement of a message the receiver sent to another agency.",
        acked,
        "NOT_THE_RECIPIENT",
        sent=lambda _e: [{"message_id": ANSWERED_ID, "recipient": OTHER.agency_id}],
    )
    reject(
        "reject-not-our-message",
        "An acknowledgement of a message the receiver received (from the sender).",
        acked,
        "NOT_OUR_MESSAGE",
        received=lambda _e: [ANSWERED_ID],
    )
    reject(
        "reject-invalid-card-update",
        "Content type card update, but the content is not a SignedCardUpdate.",
        base.but(
            header_fields={"content_type": CARD_UPDATE_CONTENT_TYPE},
            content=b"\xff\xff\xff",
        ),
        "INVALID_CARD_UPDATE",
    )

    forward_vectors(base, accept, reject)

    header_checks: dict[str, tuple[str, Forge | bytes]] = {
        "3a-message-id-upper-case": (
            "Message id in upper case (not canonical).",
            base.but(message_id=MESSAGE_ID.upper()),
        ),
        "3b-sender-empty": ("Empty sender.", base.but(header_fields={"sender": ""})),
        "3b-recipient-empty": ("Empty recipient.", base.but(header_fields={"recipient": ""})),
        "3c-created-at-absent": ("No created_at.", base.but(mutate_header=_clear("created_at"))),
        "3c-expires-at-absent": ("No expires_at.", base.but(mutate_header=_clear("expires_at"))),
        "3d-created-at-nanos-negative": (
            "created_at nanos is -1 (not a valid Timestamp).",
            base.but(mutate_header=_times((created[0], -1), _after(created, NANOS))),
        ),
        "3d-expires-at-nanos-a-second": (
            "expires_at nanos is 1000000000 (not a valid Timestamp).",
            base.but(mutate_header=_times(created, (created[0], NANOS))),
        ),
        "3d-expires-at-after-year-9999": (
            "expires_at seconds is 253402300800 (after 9999-12-31T23:59:59Z).",
            base.but(mutate_header=_times(created, (253_402_300_800, 0))),
        ),
        "3d-lifetime-zero": ("expires_at equals created_at.", base.but(ttl=dt.timedelta(0))),
        "3d-lifetime-negative": (
            "expires_at one nanosecond before created_at.",
            base.but(mutate_header=_times(created, _after(created, -1))),
        ),
        "3d-lifetime-30-days-and-1-ns": (
            "Lifetime 30 days + 1 ns: over max_lifetime by one nanosecond.",
            base.but(mutate_header=_times(created, _after(created, MAX_LIFETIME_NANOS + 1))),
        ),
        "3e-signature-63-bytes": (
            "Outer signature of 63 bytes.",
            assemble(header, ciphertext, signature[:63]),
        ),
        "3f-ciphertext-1136-bytes": (
            "Ciphertext of exactly 1136 bytes (enc + tag, nothing encrypted).",
            assemble(header, ciphertext[:1136], signature),
        ),
    }
    for name, (description, source) in header_checks.items():
        reject(f"reject-{name}", description, source, "MALFORMED_ENVELOPE")

    accept(
        "accept-lifetime-30-days",
        "Lifetime exactly 30 days (max_lifetime).",
        base.but(mutate_header=_times(created, _after(created, MAX_LIFETIME_NANOS))),
    )
    accept(
        "accept-lifetime-1-ns",
        "Lifetime of one nanosecond; the receiver's now is created_at.",
        base.but(mutate_header=_times(created, _after(created, 1))),
    )
    now = NOW + dt.timedelta(microseconds=123_456)  # a clock with microseconds
    now_stamp = (created[0], 123_456_000)
    reject(
        "reject-expired-at-now",
        "expires_at equals the receiver's now to the nanosecond.",
        base.but(mutate_header=_times(created, now_stamp)),
        "EXPIRED",
        now=now,
    )
    accept(
        "accept-expires-1-ns-after-now",
        "expires_at one nanosecond after the receiver's now.",
        base.but(mutate_header=_times(created, _after(now_stamp, 1))),
        now=now,
    )
    skew_later = _after(now_stamp, CLOCK_SKEW_NANOS)
    accept(
        "accept-created-at-the-skew",
        "created_at is now + clock_skew exactly.",
        base.but(mutate_header=_times(skew_later, _after(skew_later, NANOS))),
        now=now,
    )
    reject(
        "reject-not-yet-valid-1-ns",
        "created_at is now + clock_skew + 1 ns.",
        base.but(mutate_header=_times(_after(skew_later, 1), _after(skew_later, NANOS))),
        "NOT_YET_VALID",
        now=now,
    )

    reject(
        "reject-unknown-field",
        "A valid envelope followed by field 4 (varint 1), which no signature covers.",
        assemble(header, ciphertext, signature) + b"\x20\x01",
        "MALFORMED_ENVELOPE",
    )
    reject(
        "reject-known-field-other-wire-type",
        "A valid envelope followed by field 3 as a varint: an unknown field.",
        assemble(header, ciphertext, signature) + b"\x18\x01",
        "MALFORMED_ENVELOPE",
    )

    replayed = assemble(header, ciphertext, signature)
    reject(
        "replay-same-bytes",
        "The receiver stored these bytes before: it returns the stored receipt.",
        replayed,
        "",
        stored=_stored(same_bytes=True),
        expect=lambda envelope: {
            "result": "replay",
            "receipt": _stored_receipt(hashlib.sha256(envelope).digest()),
        },
    )
    reject(
        "replay-other-bytes",
        "The receiver stored other bytes under this sender and message id: a duplicate.",
        replayed,
        "",
        stored=_stored(same_bytes=False),
        expect=lambda _envelope: {"result": "duplicate"},
    )
    reject(
        "replay-expired",
        "A replay of stored bytes after their expiry: the expiry check comes first.",
        replayed,
        "EXPIRED",
        stored=_stored(same_bytes=True),
        now=NOW + dt.timedelta(hours=2),
    )


def forward_vectors(base: Forge, accept: Accept, reject: Reject) -> None:
    """Forwards (PROTOCOL.md 10.5): the sender forwards to the receiver a notice that the
    third agency OTHER wrote and sealed to the sender; the receiver pins OTHER."""
    sender, other = SENDER.identity(), OTHER.identity()

    def forwarded(handling: int, forwardable_to: tuple[str, ...] = ()) -> notice_pb2.Forward:
        notice = complete(sample_notice("VEC-FWD"), OTHER.agency_id)
        notice.handling = handling  # type: ignore[assignment]
        notice.forwardable_to.extend(forwardable_to)
        sealed = seal_notice(notice, sender=other, recipient=sender.card, ttl=dt.timedelta(days=1))
        header, content, signature = reopen_signed_content(
            sealed.envelope, {sender.card.encryption_key_id: sender.decryption_key}
        )
        return notice_pb2.Forward(
            original_header=header,
            original_content=content,
            original_signature=signature,
            comment="For your case",
            forwarded_by="duty-officer",
        )

    def sealed(forward: notice_pb2.Forward, number: int) -> Forge:
        return base.but(
            header_fields={"content_type": FORWARD_CONTENT_TYPE},
            content=forward.SerializeToString(),
            message_id=f"019ac9f0-8000-7000-8000-00000000f0{number:02d}",
        )

    good = forwarded(notice_pb2.TLP_AMBER_STRICT, (RECEIVER.agency_id,))
    accept(
        "accept-forward",
        "A TLP:AMBER+STRICT notice of OTHER, forwarded with OTHER's consent and signature.",
        sealed(good, 1),
        originator_pinned=True,
    )
    forged = notice_pb2.Forward()
    forged.CopyFrom(good)
    forged.original_signature = good.original_signature[:-1] + bytes(
        [good.original_signature[-1] ^ 1]
    )
    reject(
        "reject-invalid-forward",
        "A forward whose originator signature has one bit flipped (OTHER is pinned).",
        sealed(forged, 2),
        "INVALID_FORWARD",
        originator_pinned=True,
    )
    reject(
        "reject-forward-not-allowed",
        "A TLP:AMBER+STRICT forward whose originator named no agency in forwardable_to.",
        sealed(forwarded(notice_pb2.TLP_AMBER_STRICT), 3),
        "FORWARD_NOT_ALLOWED",
        originator_pinned=True,
    )


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    path = HERE / "derivations.json"
    write(path, derivations(json.loads(path.read_text(encoding="utf-8"))))
    folder = HERE / "envelopes"
    folder.mkdir(exist_ok=True)
    for name, vector in envelope_vectors().items():
        path = folder / f"{name}.json"
        if not path.exists():  # kept: regenerating would change every ciphertext
            write(path, vector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
