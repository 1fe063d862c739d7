"""Evidence bundles: what one message left in the audit logs, provable offline.

A bundle (``liaison audit proof``) holds the message's entries from one node's audit
log, an RFC 9162 inclusion proof of each against a checkpoint of that log, the
checkpoint as a signed note with the peer's cosignature, the receiver's signed receipt,
and, when the node could fetch it, the receiver's own log entry for the delivery with its
inclusion proof against a checkpoint of the receiver's log that the sender cosigned.

``verify_bundle`` checks all of it with the agencies' public cards alone. The bundle is
canonical JSON (sorted keys, one-space indent, ASCII): a file that is not exactly the
canonical encoding of what it holds is refused, so no byte of it goes unchecked.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from liaison.keys.card import PeerCard
from liaison.keys.checkpoint import (
    Checkpoint,
    origin_of,
    parse_note,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from liaison.keys.envelope import verify_receipt
from liaison.keys.errors import CheckpointError, KeysError, ReceiptError
from liaison.keys.merkle import leaf_hash, verify_inclusion
from liaison.v1 import audit_pb2, envelope_pb2

FORMAT = "liaison-evidence/v1"
MAX_BUNDLE_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 10_000
MAX_PROOF_HASHES = 64


class EvidenceError(KeysError):
    """An evidence bundle does not verify; the message says where and why."""


@dataclass(frozen=True)
class ProvenEntry:
    """A log entry with its inclusion proof."""

    index: int
    entry: bytes
    proof: tuple[bytes, ...]

    def parsed(self) -> audit_pb2.AuditEntry:
        return audit_pb2.AuditEntry.FromString(self.entry)


@dataclass(frozen=True)
class PeerLogProof:
    """The receiver's entry for the delivery, proven against its checkpoint (a note signed
    by the receiver and cosigned by the sender)."""

    checkpoint: bytes
    entry: ProvenEntry


@dataclass(frozen=True)
class Bundle:
    log: str
    message_id: str
    peer: str
    checkpoint: bytes
    entries: tuple[ProvenEntry, ...]
    receipt: bytes = b""
    peer_log: PeerLogProof | None = None


@dataclass(frozen=True)
class Verified:
    """What a bundle proves."""

    bundle: Bundle
    checkpoint: Checkpoint
    # Agencies whose cosignature of the checkpoint verified under their card.
    cosigners: tuple[str, ...]
    receipt: envelope_pb2.Receipt | None
    # The receiver's entry, proven in its own log (None if the bundle has none).
    peer_entry: audit_pb2.AuditEntry | None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _proven(entry: ProvenEntry) -> dict[str, Any]:
    return {
        "entry": _b64(entry.entry),
        "index": entry.index,
        "proof": [_b64(h) for h in entry.proof],
    }


def encode_bundle(bundle: Bundle) -> bytes:
    """The bundle's canonical JSON bytes."""
    document: dict[str, Any] = {
        "checkpoint": bundle.checkpoint.decode("utf-8"),
        "entries": [_proven(entry) for entry in bundle.entries],
        "format": FORMAT,
        "log": bundle.log,
        "message_id": bundle.message_id,
        "peer": bundle.peer,
        "peer_log": None,
        "receipt": _b64(bundle.receipt),
    }
    if bundle.peer_log is not None:
        document["peer_log"] = {
            "checkpoint": bundle.peer_log.checkpoint.decode("utf-8"),
            **_proven(bundle.peer_log.entry),
        }
    return _canonical(document)


def _canonical(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def decode_bundle(data: bytes) -> Bundle:
    """Parse a bundle's bytes; raises ``EvidenceError`` unless they are canonical."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise EvidenceError(f"the bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        document = json.loads(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise EvidenceError(f"the bundle is not JSON: {type(error).__name__}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise EvidenceError(f"the bundle is not a {FORMAT} bundle")
    if _canonical(document) != data:
        raise EvidenceError("the bundle is not in canonical form (a byte was changed)")
    try:
        bundle = _bundle_of(document)
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise EvidenceError(f"the bundle is malformed: {type(error).__name__}") from None
    if encode_bundle(bundle) != data:
        raise EvidenceError("the bundle holds fields it should not")
    return bundle


def _bytes(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(value, validate=True)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _index(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("expected an index")
    return value


def _entry_of(document: dict[str, Any]) -> ProvenEntry:
    proof = document["proof"]
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
        raise ValueError("expected a proof")
    return ProvenEntry(
        index=_index(document["index"]),
        entry=_bytes(document["entry"]),
        proof=tuple(_bytes(h) for h in proof),
    )


def _bundle_of(document: dict[str, Any]) -> Bundle:
    entries = document["entries"]
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ValueError("expected entries")
    peer_log = document["peer_log"]
    return Bundle(
        log=_text(document["log"]),
        message_id=_text(document["message_id"]),
        peer=_text(document["peer"]),
        checkpoint=_text(document["checkpoint"]).encode("utf-8"),
        entries=tuple(_entry_of(entry) for entry in entries),
        receipt=_bytes(document["receipt"]),
        peer_log=None
        if peer_log is None
        else PeerLogProof(
            checkpoint=_text(peer_log["checkpoint"]).encode("utf-8"),
            entry=_entry_of(peer_log),
        ),
    )


def _verified_checkpoint(
    note: bytes, agency_id: str, cards: list[PeerCard], what: str
) -> Checkpoint:
    """The checkpoint of ``agency_id``'s log in ``note``, signed by one of its ``cards``."""
    own = [card for card in cards if card.agency_id == agency_id]
    if not own:
        raise EvidenceError(f"no card of {agency_id} was given to check {what}")
    origin = origin_of(agency_id)
    failures = []
    for card in own:
        try:
            return verify_checkpoint(
                note,
                origin=origin,
                name=origin,
                ed25519_public=card.signing_key,
                mldsa65_public=card.mldsa65_key,
            )
        except CheckpointError as error:
            failures.append(str(error))
    raise EvidenceError(f"{what} does not verify under {agency_id}'s card: {failures[0]}")


def _cosigned_by(note: bytes, card: PeerCard) -> bool:
    name = witness_name(card.agency_id)
    for signature in parse_note(note).signatures:
        if signature.name != name:
            continue
        try:
            verify_cosignature(note, signature, name=name, ed25519_public=card.signing_key)
        except CheckpointError:
            continue
        return True
    return False


def _check_entry(
    proven: ProvenEntry, checkpoint: Checkpoint, message_id: str, what: str
) -> audit_pb2.AuditEntry:
    if proven.index >= checkpoint.size:
        raise EvidenceError(
            f"{what} {proven.index} is past the checkpoint (size {checkpoint.size})"
        )
    if any(len(h) != 32 for h in proven.proof) or not verify_inclusion(
        leaf_hash(proven.entry), proven.index, checkpoint.size, list(proven.proof), checkpoint.root
    ):
        raise EvidenceError(f"{what} {proven.index}: the inclusion proof does not verify")
    try:
        entry = proven.parsed()
    except DecodeError:
        raise EvidenceError(f"{what} {proven.index} does not parse") from None
    if entry.index != proven.index:
        raise EvidenceError(f"{what} {proven.index} names position {entry.index}")
    if entry.message_id != message_id:
        raise EvidenceError(f"{what} {proven.index} is about another message")
    return entry


def verify_bundle(data: bytes, cards: list[PeerCard]) -> Verified:
    """Check a bundle with the agencies' public ``cards``; raises ``EvidenceError``.

    Checked: canonical form; the checkpoint's signature by the log's agency; the peer's
    cosignature of it; each entry's inclusion proof, position and message id; the
    receipt's signature by the receiver and that it names the envelope the entries name;
    the receiver's entry in its own log against its checkpoint, which the sender cosigned.
    """
    bundle = decode_bundle(data)
    checkpoint = _verified_checkpoint(bundle.checkpoint, bundle.log, cards, "the checkpoint")
    cosigners = tuple(
        sorted(
            card.agency_id
            for card in cards
            if card.agency_id != bundle.log and _cosigned_by(bundle.checkpoint, card)
        )
    )
    if bundle.peer not in cosigners:
        raise EvidenceError(f"the checkpoint carries no valid cosignature by {bundle.peer}")
    if not bundle.entries:
        raise EvidenceError("the bundle holds no entry")
    digests = set()
    for proven in bundle.entries:
        entry = _check_entry(proven, checkpoint, bundle.message_id, "entry")
        if entry.peer != bundle.peer:
            raise EvidenceError(f"entry {proven.index} is about another peer")
        if entry.envelope_sha256:
            digests.add(entry.envelope_sha256)
    receipt = _check_receipt(bundle, cards, digests) if bundle.receipt else None
    peer_entry = check_peer_log(bundle, cards, receipt) if bundle.peer_log else None
    return Verified(bundle, checkpoint, cosigners, receipt, peer_entry)


def _card_of(agency_id: str, cards: list[PeerCard], what: str) -> list[PeerCard]:
    found = [card for card in cards if card.agency_id == agency_id]
    if not found:
        raise EvidenceError(f"no card of {agency_id} was given to check {what}")
    return found


def _check_receipt(
    bundle: Bundle, cards: list[PeerCard], digests: set[bytes]
) -> envelope_pb2.Receipt:
    try:
        signed = envelope_pb2.SignedReceipt.FromString(bundle.receipt)
        claimed = envelope_pb2.Receipt.FromString(signed.receipt)
    except DecodeError:
        raise EvidenceError("the receipt does not parse") from None
    if {claimed.sender, claimed.receiver} != {bundle.log, bundle.peer}:
        raise EvidenceError("the receipt is between other agencies than the bundle's")
    if claimed.envelope_sha256 not in digests:
        raise EvidenceError("the receipt names an envelope none of the entries names")
    failures = []
    for card in _card_of(claimed.receiver, cards, "the receipt"):
        try:
            return verify_receipt(
                bundle.receipt,
                issuer=card,
                message_id=bundle.message_id,
                sender=claimed.sender,
                envelope_sha256=claimed.envelope_sha256,
            )
        except ReceiptError as error:
            failures.append(str(error))
    raise EvidenceError(f"the receipt does not verify: {failures[0]}")


def check_peer_log(
    bundle: Bundle, cards: list[PeerCard], receipt: envelope_pb2.Receipt | None
) -> audit_pb2.AuditEntry:
    """The receiver's entry in its own log, proven against its checkpoint that the sender
    cosigned; raises ``EvidenceError``."""
    assert bundle.peer_log is not None
    if receipt is None:
        raise EvidenceError("the receiver's log entry is given without the receipt")
    receiver = receipt.receiver
    note = bundle.peer_log.checkpoint
    checkpoint = _verified_checkpoint(note, receiver, cards, "the receiver's checkpoint")
    sender_cards = [card for card in cards if card.agency_id == receipt.sender]
    if not any(_cosigned_by(note, card) for card in sender_cards):
        raise EvidenceError(
            f"the receiver's checkpoint carries no valid cosignature by {receipt.sender}"
        )
    entry = _check_entry(
        bundle.peer_log.entry, checkpoint, bundle.message_id, "the receiver's entry"
    )
    if not receipt.HasField("log_index") or receipt.log_index != bundle.peer_log.entry.index:
        raise EvidenceError("the receiver's entry is not the one its receipt names")
    if entry.envelope_sha256 != receipt.envelope_sha256 or entry.peer != receipt.sender:
        raise EvidenceError("the receiver's entry names another envelope or sender")
    return entry
