"""Runs every known-answer vector in tests/vectors/ (see tests/vectors/generate.py)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519

from liaison.keys import labels
from liaison.keys.card import PeerCard, parse_card
from liaison.keys.envelope import (
    EnvelopeLimits,
    check_envelope,
    hpke_info,
    issue_receipt,
    open_checked,
)
from liaison.keys.errors import EnvelopeRejected, reason_name
from liaison.keys.ids import encryption_key_id, mldsa65_key_id, signing_key_id
from liaison.keys.rotation import CardUpdateError, verify_card_update
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2
from tests.vectors.generate import card_identity
from tests.vectors.keys import FixedKeys

VECTORS = Path(__file__).resolve().parent / "vectors"
ENVELOPES = sorted((VECTORS / "envelopes").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _card(public: dict[str, str]) -> PeerCard:
    signing = bytes.fromhex(public["ed25519_public"])
    kem_mlkem = bytes.fromhex(public["mlkem768_public"])
    kem_x25519 = bytes.fromhex(public["x25519_public"])
    return PeerCard(
        agency_id=public["agency_id"],
        name="",
        endpoint="",
        signing_key=ed25519.Ed25519PublicKey.from_public_bytes(signing),
        encryption_key=hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(kem_mlkem),
            x25519.X25519PublicKey.from_public_bytes(kem_x25519),
        ),
        signing_key_id=signing_key_id(signing),
        encryption_key_id=encryption_key_id(kem_mlkem, kem_x25519),
        tls_certificate=b"",
        tls_fingerprint="",
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        signed_card=b"",
    )


# Reasons no vector can show: UNSPECIFIED is no refusal, and a revoked pin is an
# input the vector format does not hold yet.
WITHOUT_VECTOR = {"UNSPECIFIED", "SENDER_REVOKED"}


def test_vectors_are_present() -> None:
    assert len(ENVELOPES) >= 10
    results = {_load(p)["expect"]["result"] for p in ENVELOPES}
    assert results == {"accept", "reject", "replay", "duplicate"}


def test_every_reject_reason_has_a_vector() -> None:
    shown = {_load(p)["expect"].get("reason") for p in ENVELOPES}
    reasons = {reason_name(value) for value in envelope_pb2.RejectReason.values()}
    assert reasons - WITHOUT_VECTOR <= shown


@pytest.mark.parametrize("path", ENVELOPES, ids=[p.stem for p in ENVELOPES])
def test_envelope_vector(path: Path) -> None:
    vector = _load(path)
    assert run_envelope_vector(vector) == vector["expect"]


def run_envelope_vector(vector: dict[str, Any]) -> dict[str, str]:
    """The receiver's outcome for one envelope vector (PROTOCOL.md section 12): checks
    1-11, the replay check against the vector's stored messages, then checks 13-19."""
    receiver = FixedKeys.from_json(vector["receiver"]).identity()
    trust = TrustStore.of(_card(sender) for sender in vector["trusted_senders"])
    now = dt.datetime.fromisoformat(vector["now"].replace("Z", "+00:00"))
    envelope = base64.b64decode(vector["envelope"])
    stored = {(s["sender"], s["message_id"]): s for s in vector.get("stored", [])}
    try:
        checked = check_envelope(
            envelope,
            receiver=receiver,
            trust=trust,
            authenticated_peer=vector["authenticated_peer"],
            now=now,
            limits=EnvelopeLimits(**vector.get("limits", {})),
        )
        earlier = stored.get((checked.header.sender, checked.header.message_id))
        if earlier is not None:
            if earlier["envelope_sha256"] == checked.envelope_sha256.hex():
                return {"result": "replay", "receipt": earlier["receipt"]}
            return {"result": "duplicate"}
        opened = open_checked(checked, receiver=receiver)
        refused = _answers_a_message_we_did_not_send(vector, opened.refers_to, checked.header)
        if refused:
            return {"result": "reject", "reason": refused}
    except EnvelopeRejected as rejection:
        return {"result": "reject", "reason": reason_name(rejection.reason)}
    return {"result": "accept", "content": opened.content.hex()}


def _answers_a_message_we_did_not_send(
    vector: dict[str, Any], refers_to: str | None, header: envelope_pb2.EnvelopeHeader
) -> str | None:
    """Check 19a (PROTOCOL.md 10.2): an acknowledgement or reply must answer a message the
    receiver sent to the sender; ``sent`` and ``received`` are the receiver's messages."""
    if refers_to is None:
        return None
    sent = {m["message_id"]: m["recipient"] for m in vector.get("sent", [])}
    if refers_to not in sent:
        return "NOT_OUR_MESSAGE" if refers_to in vector.get("received", []) else "UNKNOWN_MESSAGE"
    return None if sent[refers_to] == header.sender else "NOT_THE_RECIPIENT"


def test_derivations() -> None:
    vector = _load(VECTORS / "derivations.json")
    sender = FixedKeys.from_json(vector["keys"]["sender"]).identity()
    receiver = FixedKeys.from_json(vector["keys"]["receiver"]).identity()
    assert vector["key_ids"] == {
        "sender_signing_key_id": sender.card.signing_key_id,
        "sender_encryption_key_id": sender.card.encryption_key_id,
        "receiver_signing_key_id": receiver.card.signing_key_id,
        "receiver_encryption_key_id": receiver.card.encryption_key_id,
    }
    for case in vector["signing_inputs"]:
        parts = [bytes.fromhex(p) for p in case["parts"]]
        expected = labels.signing_input(case["label"].encode(), *parts)
        assert case["signing_input"] == expected.hex()
        assert case["sender_signature"] == sender.signing_key.sign(expected).hex()
    info = vector["hpke_info"]

    assert info["info"] == hpke_info(bytes.fromhex(info["header"])).hex()
    receipt = vector["receipt"]
    body = envelope_pb2.Receipt.FromString(bytes.fromhex(receipt["receipt"]))
    reissued = envelope_pb2.SignedReceipt.FromString(
        issue_receipt(
            receiver=receiver,
            message_id=body.message_id,
            envelope_sha256=body.envelope_sha256,
            sender=body.sender,
            status=body.status,
            now=body.received_at.ToDatetime(tzinfo=dt.UTC),
        )
    )
    assert reissued.receipt.hex() == receipt["receipt"]
    assert reissued.signature.hex() == receipt["signature"]


def test_mlkem768_keys_derive_from_their_seed_and_are_stored_as_it() -> None:
    """PROTOCOL.md appendix B: the public key from a 64-byte seed d || z, and the
    PKCS#8 DER that holds the seed at a fixed offset."""
    for case in _load(VECTORS / "derivations.json")["mlkem768"]:
        seed = bytes.fromhex(case["seed"])
        key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        assert key.public_key().public_bytes_raw().hex() == case["public_key"]
        # The seed is d || z: the encapsulation key depends on d alone.
        for changed, same in ((seed[:32] + bytes(32), True), (bytes(32) + seed[32:], False)):
            public = mlkem.MLKEM768PrivateKey.from_seed_bytes(changed).public_key()
            assert (public.public_bytes_raw().hex() == case["public_key"]) is same
        pkcs8 = bytes.fromhex(case["pkcs8_der"])
        none = serialization.NoEncryption()
        der, pkcs8_format = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
        assert key.private_bytes(der, pkcs8_format, none) == pkcs8
        offset = case["pkcs8_seed_offset"]
        assert pkcs8[offset:] == seed
        loaded = serialization.load_der_private_key(pkcs8, password=None)
        assert isinstance(loaded, mlkem.MLKEM768PrivateKey)
        assert loaded.public_key().public_bytes_raw().hex() == case["public_key"]


def test_card_derivations() -> None:
    """PROTOCOL.md 4 and 12: a card without an ML-DSA-65 key has exactly the bytes it had
    before the field existed; a card with one verifies under both keys."""
    case = _load(VECTORS / "derivations.json")["cards"]
    tls_certificate = bytes.fromhex(case["tls_certificate"])
    classic = card_identity(tls_certificate, None).card
    assert classic.signed_card.hex() == case["classic"]["signed_card"]
    assert classic.fingerprint == case["classic"]["fingerprint"]
    assert not parse_card(classic.signed_card).post_quantum_signed

    key = mldsa.MLDSA65PrivateKey.from_seed_bytes(bytes.fromhex(case["mldsa65_seed"]))
    public = key.public_key().public_bytes_raw()
    assert public.hex() == case["mldsa65_public"]
    assert mldsa65_key_id(public) == case["mldsa65_key_id"]
    pq = case["post_quantum"]
    signed_card = bytes.fromhex(pq["signed_card"])
    signature = bytes.fromhex(pq["mldsa65_signature"])
    outer = envelope_pb2.SignedCard.FromString(signed_card)
    assert outer.mldsa65_signature == signature
    assert (
        labels.signing_input(labels.CARD_SIGNATURE_LABEL, outer.card).hex() == (pq["signing_input"])
    )
    # The identity re-signs with Ed25519 (deterministic) and keeps the ML-DSA-65 signature
    # only because it verifies: the same bytes back means both signatures hold.
    assert card_identity(tls_certificate, key, signature).card.signed_card == signed_card
    parsed = parse_card(signed_card)
    assert parsed.post_quantum_signed
    assert parsed.fingerprint == pq["fingerprint"]
    for check in pq["verify"]:
        try:
            key.public_key().verify(
                signature, bytes.fromhex(pq["signing_input"]), check["context"].encode()
            )
        except InvalidSignature:
            verified = False
        else:
            verified = True
        assert verified is check["expect"], check["context"]


def test_card_update_vectors() -> None:
    """PROTOCOL.md 4.6: the update from card 0 to card 1 verifies and is recomputed byte
    for byte; each bent update is refused."""
    case = _load(VECTORS / "derivations.json")["card_updates"]
    pinned = parse_card(bytes.fromhex(case["pinned_card"]))
    update = bytes.fromhex(case["update"])
    card = verify_card_update(update, pinned=pinned)
    assert card.signed_card.hex() == case["next_card"]
    assert card.fingerprint == case["next_fingerprint"]
    assert card.sequence == 1
    next_key = ed25519.Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(case["next_ed25519_seed"])
    )
    assert card.signing_key.public_bytes_raw() == next_key.public_key().public_bytes_raw()
    signed = envelope_pb2.SignedCardUpdate.FromString(update)
    message = labels.signing_input(labels.CARD_UPDATE_LABEL, signed.update)
    assert message.hex() == case["signing_input"]
    pinned.signing_key.verify(signed.signature, message)
    assert envelope_pb2.CardUpdate.FromString(signed.update).previous_card_sha256 == pinned.sha256
    assert set(case["bent"]) == {
        "signed-by-the-new-key",
        "skips-a-sequence-number",
        "names-another-predecessor",
    }
    for bent in case["bent"].values():
        with pytest.raises(CardUpdateError):
            verify_card_update(bytes.fromhex(bent), pinned=pinned)
