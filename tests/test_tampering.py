"""Every tampered, misaddressed, stale or replayed envelope is refused with its
reason code, audited, and stores nothing. Each case goes through a real node
over real mutual TLS, from a real pinned peer's TLS identity."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from liaison.keys.certs import der_to_pem
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import new_message_id
from liaison.keys.notice import MAX_ATTACHMENTS, MAX_IDENTIFIERS, MAX_REFERENCES
from liaison.server.config import CONFIG_FILE
from liaison.server.store.models import Direction
from liaison.v1 import envelope_pb2, notice_pb2
from tests.conftest import (
    Inspector,
    RunningNode,
    deliver_checked,
    deliver_raw,
    make_home,
    peer_channel,
    pin,
)
from tests.forge import Forge, assemble
from tests.notices import complete, sample_notice

R = envelope_pb2.RejectReason
MAX_ENVELOPE_BYTES = 256 * 1024


@dataclass
class World:
    a: NodeIdentity  # the connecting peer, pinned by b
    b: RunningNode  # the receiving node under test
    c: NodeIdentity  # another peer pinned by b, not connected
    x: NodeIdentity  # an agency b has never pinned
    channel: grpc.Channel
    inspector: Inspector

    def forge(self, **changes: object) -> Forge:
        forge = Forge(
            sender=self.a,
            recipient=self.b.card,
            notice=complete(sample_notice(), self.a.agency_id),
            now=dt.datetime.now(dt.UTC),
        )
        return forge.but(**changes)

    def deliver(self, envelope: bytes) -> envelope_pb2.Receipt:
        return deliver_checked(self.channel, envelope, self.b.card)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("tampering")
    homes = {
        name: make_home(root, name)
        for name in ("MA.DGSN.CCPI", "DE.BPOL.LO-RABAT", "FR.DGPN.SCCOPOL", "XX.UNKNOWN")
    }
    b_home = homes["DE.BPOL.LO-RABAT"]
    config = b_home.path / CONFIG_FILE
    config.write_text(
        config.read_text().replace(
            "max_envelope_bytes = 16777216", f"max_envelope_bytes = {MAX_ENVELOPE_BYTES}"
        )
    )
    pin(b_home, homes["MA.DGSN.CCPI"].identity().card)
    pin(b_home, homes["FR.DGPN.SCCOPOL"].identity().card)
    b = RunningNode(b_home).start()
    a = homes["MA.DGSN.CCPI"].identity()
    channel = peer_channel(a, b.card)
    inspector = Inspector(b_home)
    try:
        yield World(
            a=a,
            b=b,
            c=homes["FR.DGPN.SCCOPOL"].identity(),
            x=homes["XX.UNKNOWN"].identity(),
            channel=channel,
            inspector=inspector,
        )
    finally:
        channel.close()
        inspector.close()
        b.stop()


def tamper_header(forge: Forge, resign: bool = False, **changes: object) -> bytes:
    """Change header fields after signing; optionally sign the outer layer again."""
    header_bytes, ciphertext, signature = forge.parts()
    header = envelope_pb2.EnvelopeHeader.FromString(header_bytes)
    for name, value in changes.items():
        if isinstance(value, dt.datetime):
            getattr(header, name).FromDatetime(value)
        else:
            setattr(header, name, value)
    changed = header.SerializeToString()
    if resign:
        signature = forge.sign_outer(changed, ciphertext)
    return assemble(changed, ciphertext, signature)


def flip_bit(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _later(w: World) -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=3)


# Each case builds an envelope in the world and names the reason it must be refused with.
Case = Callable[[World], bytes]
HEADER_FIELD_CASES: dict[str, tuple[Case, int]] = {
    "version": (lambda w: tamper_header(w.forge(), version=2), R.REJECT_REASON_UNSUPPORTED_VERSION),
    "suite": (lambda w: tamper_header(w.forge(), suite=7), R.REJECT_REASON_UNSUPPORTED_VERSION),
    "message_id": (
        lambda w: tamper_header(w.forge(), message_id="01a22488-44ca-7885-9083-000000000000"),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "sender-unknown": (
        lambda w: tamper_header(w.forge(), sender="XX.UNKNOWN"),
        R.REJECT_REASON_UNKNOWN_SENDER,
    ),
    "sender-other-peer": (
        lambda w: tamper_header(w.forge(), sender="FR.DGPN.SCCOPOL"),
        R.REJECT_REASON_SENDER_MISMATCH,
    ),
    "recipient": (
        lambda w: tamper_header(w.forge(), recipient="FR.DGPN.SCCOPOL"),
        R.REJECT_REASON_WRONG_RECIPIENT,
    ),
    "created_at": (
        lambda w: tamper_header(w.forge(), created_at=_later(w) - dt.timedelta(hours=4)),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "expires_at": (
        lambda w: tamper_header(w.forge(), expires_at=_later(w)),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "sender_signing_key_id": (
        lambda w: tamper_header(w.forge(), sender_signing_key_id="00" * 16),
        R.REJECT_REASON_UNKNOWN_SIGNING_KEY,
    ),
    "recipient_encryption_key_id": (
        lambda w: tamper_header(w.forge(), recipient_encryption_key_id="00" * 16),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "content_type": (
        lambda w: tamper_header(w.forge(), content_type="text/plain"),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
}


def _ciphertext_flip(w: World, resign: bool) -> bytes:
    forge = w.forge()
    header, ciphertext, signature = forge.parts()
    flipped = flip_bit(ciphertext, len(ciphertext) // 2)
    return assemble(header, flipped, forge.sign_outer(header, flipped) if resign else signature)


def _outer_signature_swapped(w: World) -> bytes:
    header, ciphertext, _ = w.forge().parts()
    _, _, other_signature = w.forge(message_id="01a22488-44ca-7885-9083-111111111111").parts()
    return assemble(header, ciphertext, other_signature)


def _inner_signature_swapped(w: World) -> bytes:
    other = w.forge(message_id="01a22488-44ca-7885-9083-222222222222")
    other_header = other.header().SerializeToString()
    stolen = other.sign_inner(other_header, other.notice.SerializeToString())
    return w.forge(inner_signature=stolen).build()


def _far_future_expiry(header: envelope_pb2.EnvelopeHeader) -> None:
    header.expires_at.seconds = 10**15  # far beyond the year 9999


def _bad_attachment(w: World) -> bytes:
    notice = complete(sample_notice(attachment=b"evidence"), w.a.agency_id)
    notice.attachments[0].content = b"swapped evidence"
    return w.forge(notice=notice).build()


def _notice_with(change: Callable[[notice_pb2.CaseNotice], None]) -> Case:
    """A case: a valid notice changed by ``change``, correctly signed and sealed."""

    def build(w: World) -> bytes:
        notice = complete(sample_notice(), w.a.agency_id)
        change(notice)
        return w.forge(notice=notice).build()

    return build


def _many_references(notice: notice_pb2.CaseNotice) -> None:
    notice.references.extend(new_message_id() for _ in range(MAX_REFERENCES + 1))


def _many_attachments(notice: notice_pb2.CaseNotice) -> None:
    for index in range(MAX_ATTACHMENTS + 1):
        notice.attachments.add(name=f"a{index}", sha256=hashlib.sha256(b"").digest())


def _many_identifiers(notice: notice_pb2.CaseNotice) -> None:
    notice.subjects[0].identifiers.extend(
        notice_pb2.Identifier(value=str(i)) for i in range(MAX_IDENTIFIERS + 1)
    )


# Notice rules: each case and the problem the audit detail must name.
NOTICE_CASES: dict[str, tuple[Case, str]] = {
    "too-many-references": (_notice_with(_many_references), "more than 100 references"),
    "too-many-attachments": (_notice_with(_many_attachments), "more than 100 attachments"),
    "too-many-identifiers": (
        _notice_with(_many_identifiers),
        "more than 50 subject 1 identifiers",
    ),
    "unknown-source-reliability": (
        _notice_with(lambda n: setattr(n.evaluation, "source_reliability", 42)),
        "evaluation source reliability is unknown (42)",
    ),
    "unknown-subject-kind": (
        _notice_with(lambda n: setattr(n.subjects[0], "kind", 9)),
        "subject 1 kind is unknown (9)",
    ),
    "unknown-identifier-type": (
        _notice_with(lambda n: setattr(n.subjects[0].identifiers[0], "type", 99)),
        "subject 1 identifier 1 type is unknown (99)",
    ),
    "invalid-created-at": (
        _notice_with(lambda n: setattr(n.created_at, "nanos", -1)),
        "created time is not a valid Timestamp",
    ),
}


OTHER_CASES: dict[str, tuple[Case, int]] = {
    **{
        name: (build, R.REJECT_REASON_INVALID_NOTICE)
        for name, (build, _problem) in NOTICE_CASES.items()
    },
    "header-changed-and-resigned": (
        lambda w: tamper_header(
            w.forge(), resign=True, message_id="01a22488-44ca-7885-9083-333333333333"
        ),
        R.REJECT_REASON_DECRYPTION_FAILED,
    ),
    "ciphertext-bit-flipped": (
        lambda w: _ciphertext_flip(w, False),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "ciphertext-bit-flipped-and-resigned": (
        lambda w: _ciphertext_flip(w, True),
        R.REJECT_REASON_DECRYPTION_FAILED,
    ),
    "outer-signature-swapped": (_outer_signature_swapped, R.REJECT_REASON_BAD_OUTER_SIGNATURE),
    "inner-signature-swapped": (_inner_signature_swapped, R.REJECT_REASON_BAD_INNER_SIGNATURE),
    "outer-signed-by-other-key": (
        lambda w: w.forge(outer_key=ed25519.Ed25519PrivateKey.generate()).build(),
        R.REJECT_REASON_BAD_OUTER_SIGNATURE,
    ),
    "notice-signed-by-other-key": (
        lambda w: w.forge(inner_key=ed25519.Ed25519PrivateKey.generate()).build(),
        R.REJECT_REASON_BAD_INNER_SIGNATURE,
    ),
    "notice-signed-by-other-peer": (
        lambda w: w.forge(inner_key=w.c.signing_key).build(),
        R.REJECT_REASON_BAD_INNER_SIGNATURE,
    ),
    "sealed-for-another-recipient": (
        lambda w: w.forge(recipient=w.c.card).build(),
        R.REJECT_REASON_WRONG_RECIPIENT,
    ),
    "from-an-unpinned-agency": (
        lambda w: w.forge(sender=w.x).build(),
        R.REJECT_REASON_UNKNOWN_SENDER,
    ),
    "expired": (
        lambda w: w.forge(now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).build(),
        R.REJECT_REASON_EXPIRED,
    ),
    "created-in-the-future": (
        lambda w: w.forge(now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).build(),
        R.REJECT_REASON_NOT_YET_VALID,
    ),
    "lifetime-too-long": (
        lambda w: w.forge(ttl=dt.timedelta(days=90)).build(),
        R.REJECT_REASON_MALFORMED_ENVELOPE,
    ),
    "not-a-uuid7": (
        lambda w: w.forge(message_id="not-a-message-id").build(),
        R.REJECT_REASON_MALFORMED_ENVELOPE,
    ),
    "time-out-of-range": (
        lambda w: w.forge(mutate_header=_far_future_expiry).build(),
        R.REJECT_REASON_MALFORMED_ENVELOPE,
    ),
    "garbage-bytes": (lambda w: b"\xff\xff\xff\x00garbage", R.REJECT_REASON_MALFORMED_ENVELOPE),
    "empty": (lambda w: b"", R.REJECT_REASON_MALFORMED_ENVELOPE),
    "too-large": (
        lambda w: w.forge(content=b"\x00" * (MAX_ENVELOPE_BYTES + 1)).build(),
        R.REJECT_REASON_TOO_LARGE,
    ),
    "encrypted-to-another-key": (
        lambda w: w.forge(
            recipient=w.c.card,
            header_fields={
                "recipient": w.b.card.agency_id,
                "recipient_encryption_key_id": w.b.card.encryption_key_id,
            },
        ).build(),
        R.REJECT_REASON_DECRYPTION_FAILED,
    ),
    "unknown-encryption-key": (
        lambda w: w.forge(header_fields={"recipient_encryption_key_id": "11" * 16}).build(),
        R.REJECT_REASON_UNKNOWN_ENCRYPTION_KEY,
    ),
    "content-not-a-notice": (
        lambda w: w.forge(content=b"\xff\xff\xff\xff").build(),
        R.REJECT_REASON_INVALID_NOTICE,
    ),
    "attachment-digest-mismatch": (_bad_attachment, R.REJECT_REASON_INVALID_NOTICE),
    "unsupported-content-type": (
        lambda w: w.forge(header_fields={"content_type": "application/x-other"}).build(),
        R.REJECT_REASON_UNSUPPORTED_CONTENT_TYPE,
    ),
}


@pytest.mark.parametrize(
    ("build", "reason"),
    [pytest.param(*case, id=name) for name, case in {**HEADER_FIELD_CASES, **OTHER_CASES}.items()],
)
def test_rejected_with_reason_audited_and_not_stored(
    world: World, build: Case, reason: int
) -> None:
    envelope = build(world)
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()

    receipt = world.deliver(envelope)

    assert envelope_pb2.RejectReason.Name(receipt.reason) == envelope_pb2.RejectReason.Name(reason)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert receipt.envelope_sha256 == hashlib.sha256(envelope).digest()
    assert world.inspector.count_messages() == stored
    events = world.inspector.audit_since(seq)
    assert [(e.event, e.reason) for e in events] == [
        ("rejected", envelope_pb2.RejectReason.Name(reason).removeprefix("REJECT_REASON_"))
    ]
    assert events[0].envelope_sha256 == hashlib.sha256(envelope).hexdigest()
    assert events[0].peer == world.a.agency_id


@pytest.mark.parametrize(
    ("build", "problem"), [pytest.param(*case, id=name) for name, case in NOTICE_CASES.items()]
)
def test_a_broken_notice_rule_is_named_in_the_audit_detail(
    world: World, build: Case, problem: str
) -> None:
    seq = world.inspector.last_audit_seq()
    world.deliver(build(world))
    [event] = world.inspector.audit_since(seq)
    assert event.detail is not None
    assert problem in event.detail


def test_unpinned_client_certificate_is_refused_at_the_handshake(world: World) -> None:
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()
    channel = peer_channel(world.x, world.b.card)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            deliver_raw(channel, world.forge(sender=world.x).build())
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert world.inspector.count_messages() == stored
    # Refused during the TLS handshake: no envelope reached the node to audit.
    assert world.inspector.last_audit_seq() == seq


class TestReplay:
    def test_replay_returns_the_original_receipt_and_stores_one_copy(self, world: World) -> None:
        envelope = world.forge(message_id="01a22488-44ca-7885-9083-aaaaaaaaaaaa").build()
        before = world.inspector.count_messages(Direction.INBOUND)
        first = deliver_raw(world.channel, envelope)
        seq = world.inspector.last_audit_seq()
        again = deliver_raw(world.channel, envelope)
        assert again == first
        assert (
            envelope_pb2.Receipt.FromString(
                envelope_pb2.SignedReceipt.FromString(again).receipt
            ).status
            == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        )
        assert world.inspector.count_messages(Direction.INBOUND) == before + 1
        assert [e.event for e in world.inspector.audit_since(seq)] == ["duplicate"]

    def test_same_id_with_other_bytes_is_a_duplicate_and_not_stored(self, world: World) -> None:
        message_id = "01a22488-44ca-7885-9083-bbbbbbbbbbbb"
        world.deliver(world.forge(message_id=message_id).build())
        before = world.inspector.count_messages(Direction.INBOUND)
        receipt = world.deliver(world.forge(message_id=message_id).build())  # re-sealed: new bytes
        assert receipt.status == envelope_pb2.RECEIPT_STATUS_DUPLICATE
        assert world.inspector.count_messages(Direction.INBOUND) == before

    def test_concurrent_replays_store_one_copy(self, world: World) -> None:
        envelope = world.forge(message_id="01a22488-44ca-7885-9083-cccccccccccc").build()
        before = world.inspector.count_messages(Direction.INBOUND)
        with ThreadPoolExecutor(8) as pool:
            receipts = list(pool.map(lambda _: deliver_raw(world.channel, envelope), range(8)))
        assert len(set(receipts)) == 1
        assert world.inspector.count_messages(Direction.INBOUND) == before + 1


def test_audit_trail_never_holds_content(world: World) -> None:
    notice = complete(sample_notice(), world.a.agency_id)
    seq = world.inspector.last_audit_seq()
    world.deliver(
        world.forge(notice=notice, message_id="01a22488-44ca-7885-9083-dddddddddddd").build()
    )
    world.deliver(world.forge(notice=notice, inner_key=world.c.signing_key).build())
    text = " ".join(
        str(value) for event in world.inspector.audit_since(seq) for value in vars(event).values()
    )
    for secret in (notice.body, notice.subject, notice.subjects[0].name, notice.case_reference):
        assert secret not in text


def test_client_without_a_certificate_is_refused_at_the_handshake(world: World) -> None:
    stored = world.inspector.count_messages()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=der_to_pem(world.b.card.tls_certificate)
    )
    channel = grpc.secure_channel(
        world.b.card.endpoint,
        credentials,
        options=[("grpc.ssl_target_name_override", world.b.card.tls_name)],
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            deliver_raw(channel, world.forge().build())
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert world.inspector.count_messages() == stored
