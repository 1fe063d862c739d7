"""Writes the known-answer vectors in this folder.

    python -m tests.vectors.generate

``derivations.json`` is deterministic (fixed keys, Ed25519 is deterministic):
``tests/test_vectors.py`` recomputes every value in it, so a change in a label,
a key id or a signed byte string fails the tests. The envelope vectors in
``envelopes/`` contain HPKE ciphertexts, whose ephemeral randomness the
``cryptography`` API does not let us fix; regenerating them gives other bytes
with the same expectations. They are written once and kept.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from liaison.keys import labels
from liaison.keys.envelope import issue_receipt
from liaison.v1 import envelope_pb2, notice_pb2
from tests.forge import Forge, assemble
from tests.notices import complete, sample_notice
from tests.vectors.keys import OTHER, RECEIVER, SENDER

HERE = Path(__file__).resolve().parent
NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
MESSAGE_ID = "019ac9f0-8000-7000-8000-000000000001"


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def derivations() -> dict[str, Any]:
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
    vectors: dict[str, tuple[str, Forge | bytes, dict[str, Any]]] = {}

    def accept(name: str, description: str, forge: Forge) -> None:
        vectors[name] = (
            description,
            forge,
            {"result": "accept", "content": forge.notice.SerializeToString().hex()},
        )

    def reject(name: str, description: str, envelope: Forge | bytes, reason: str) -> None:
        vectors[name] = (description, envelope, {"result": "reject", "reason": reason})

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

    out = {}
    for name, (description, source, expect) in vectors.items():
        envelope = source.build() if isinstance(source, Forge) else source
        out[name] = {
            "description": description,
            "receiver": RECEIVER.to_json(),
            "trusted_senders": [SENDER.public_json()],
            "authenticated_peer": SENDER.agency_id
            if name != "reject-unknown-sender"
            else OTHER.agency_id,
            "now": _iso(NOW),
            "envelope": base64.b64encode(envelope).decode(),
            "expect": expect,
        }
    return out


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    write(HERE / "derivations.json", derivations())
    folder = HERE / "envelopes"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()
    for name, vector in envelope_vectors().items():
        write(folder / f"{name}.json", vector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
