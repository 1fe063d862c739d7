"""Forwarding a received notice to a third agency (issue 9; docs/PROTOCOL.md 10.5).

The handling code decides (TLP:CLEAR, GREEN, AMBER go anywhere; AMBER+STRICT and RED
only where the originator agreed), the forward carries the originator's signed notice
whole, and the originator hears of every forward through an acknowledgement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.client.api import LiaisonClient
from liaison.client.cli import main
from liaison.client.errors import PermissionDenied, RequestRejected
from liaison.keys.content_types import FORWARD_CONTENT_TYPE
from liaison.keys.envelope import reopen_signed_content, seal_content, seal_notice
from liaison.keys.forward import may_forward, parse_forward
from liaison.keys.identity import NodeIdentity
from liaison.keys.notice import acknowledgement_problems, notice_problems
from liaison.server.home import NodeHome
from liaison.server.store.models import Direction
from liaison.v1 import envelope_pb2, node_pb2, notice_pb2
from tests.conftest import (
    Inspector,
    RunningNode,
    deliver_checked,
    make_home,
    peer_channel,
    pin_each_other,
)
from tests.notices import complete, sample_notice

A_ID, B_ID, C_ID, D_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT", "FR.DGPN.SCCOPOL", "ES.CNP.CGI"
WAIT = 60
SECRET = "a credential's own passphrase"
R = envelope_pb2.RejectReason


@dataclass
class Agencies:
    """A, B and C pin one another; D pins only B (it cannot check A's signature)."""

    a: RunningNode
    b: RunningNode
    c: RunningNode
    d: RunningNode
    secret: Path

    def as_user(self, node: RunningNode, name: str) -> LiaisonClient:
        return LiaisonClient.from_home(node.home.path, identity=name, passphrase=SECRET)


def _add_user(home: NodeHome, name: str, secret: Path) -> None:
    command = ["users", "add", name, "--role", "operator", "--home", str(home.path)]
    assert main([*command, "--new-passphrase-file", str(secret)]) == 0


@pytest.fixture(scope="module")
def agencies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agencies]:
    root = tmp_path_factory.mktemp("forward")
    homes = [make_home(root, agency) for agency in (A_ID, B_ID, C_ID, D_ID)]
    a_home, b_home, c_home, d_home = homes
    pin_each_other(a_home, b_home, c_home)
    pin_each_other(b_home, d_home)
    secret = root / "secret"
    secret.write_text(SECRET, encoding="utf-8")
    secret.chmod(0o600)
    _add_user(b_home, "ops", secret)
    _add_user(c_home, "analyst", secret)
    nodes = [RunningNode(home).start() for home in homes]
    try:
        yield Agencies(*nodes, secret=secret)
    finally:
        for node in nodes:
            node.stop()


def _received_at_b(agencies: Agencies, notice: notice_pb2.CaseNotice) -> str:
    """Send ``notice`` from A to B; its message id once delivered."""
    with agencies.a.client() as client:
        sent = client.send_notice(B_ID, notice, wait_seconds=WAIT)
    assert sent.state == "delivered"
    return sent.message_id


def _notice(
    case: str, handling: int, *, forwardable_to: tuple[str, ...] = ()
) -> notice_pb2.CaseNotice:
    notice = sample_notice(case)
    notice.handling = handling  # type: ignore[assignment]
    notice.forwardable_to.extend(forwardable_to)
    return notice


def _events(node: RunningNode, message_id: str) -> list[tuple[str, str]]:
    with node.client() as client:
        return [(e.event, e.detail) for e in client.get_status(message_id).timeline]


def test_a_forward_reaches_the_third_agency_whole_and_the_originator_is_told(
    agencies: Agencies,
) -> None:
    original = _received_at_b(agencies, _notice("FWD-GREEN", notice_pb2.TLP_GREEN))
    with agencies.b.client() as client:
        forwarded = client.forward(original, C_ID, comment="For your case 7")
        assert client.get_status(forwarded.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )
        thread = client.thread(original)
    told = next(m for m in thread if m.content_type.endswith("acknowledgement.v1+proto"))
    with agencies.b.client() as client:
        assert client.get_status(told.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )
    assert ("forwarded-by-peer", f"to {C_ID} as {forwarded.message_id}") in _events(
        agencies.a, original
    )
    assert any(
        event == "forwarded" and detail.startswith(f"to {C_ID} as {forwarded.message_id}")
        for event, detail in _events(agencies.b, original)
    )

    with agencies.c.client() as client:
        detail = client.get_message(forwarded.message_id)
    assert detail.summary.content_type == FORWARD_CONTENT_TYPE
    assert detail.summary.peer == B_ID
    sent = _notice("FWD-GREEN", notice_pb2.TLP_GREEN)
    assert (detail.notice.subject, detail.notice.body) == (sent.subject, sent.body)
    assert detail.notice.originator.agency_id == A_ID
    origin = detail.forwarded_from
    assert (origin.originator, origin.original_message_id) == (A_ID, original)
    assert (origin.forwarded_by, origin.comment) == ("admin", "For your case 7")
    assert origin.originator_signature_verified


def test_strict_and_red_go_only_where_the_originator_agreed(agencies: Agencies) -> None:
    strict = _received_at_b(agencies, _notice("FWD-STRICT", notice_pb2.TLP_AMBER_STRICT))
    with Inspector(agencies.b.home) as inspector:
        before = inspector.count_messages(Direction.OUTBOUND)
        seq = inspector.last_audit_seq()
    with agencies.b.client() as client, pytest.raises(RequestRejected) as refused:
        client.forward(strict, C_ID)
    assert "TLP:AMBER+STRICT" in str(refused.value)
    assert A_ID in str(refused.value)
    with Inspector(agencies.b.home) as inspector:
        assert inspector.count_messages(Direction.OUTBOUND) == before
        denied = [e for e in inspector.audit_since(seq) if e.event == "access-denied"]
    assert [(e.message_id, e.actor) for e in denied] == [(strict, "admin")]
    assert denied[0].detail is not None
    assert f"forward to {C_ID} refused" in denied[0].detail

    agreed = _received_at_b(
        agencies, _notice("FWD-STRICT-OK", notice_pb2.TLP_AMBER_STRICT, forwardable_to=(C_ID,))
    )
    with agencies.b.client() as client:
        with pytest.raises(RequestRejected, match="did not name"):
            client.forward(agreed, D_ID)  # consent names C, not D
        forwarded = client.forward(agreed, C_ID)
        assert client.get_status(forwarded.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )


def test_a_red_forward_names_readers_at_the_third_agency(agencies: Agencies) -> None:
    red = _notice("FWD-RED", notice_pb2.TLP_RED, forwardable_to=(C_ID,))
    red.readers.append("ops")
    original = _received_at_b(agencies, red)
    with agencies.b.client() as client, pytest.raises(PermissionDenied, match="TLP:RED"):
        client.forward(original, C_ID, readers=["analyst"])  # admin may not read it
    with agencies.as_user(agencies.b, "ops") as ops:
        with pytest.raises(RequestRejected, match="at least one reader"):
            ops.forward(original, C_ID)
        forwarded = ops.forward(original, C_ID, readers=["analyst"])
        assert ops.get_status(forwarded.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )
    # At B, the forward is read back by whoever forwarded it, not by A's sender's name.
    with agencies.as_user(agencies.b, "ops") as ops:
        assert ops.get_message(forwarded.message_id).notice.body == red.body
    with agencies.b.client() as client, pytest.raises(PermissionDenied, match="TLP:RED"):
        client.get_message(forwarded.message_id)
    with agencies.c.client() as client, pytest.raises(PermissionDenied, match="TLP:RED"):
        client.get_message(forwarded.message_id)
    with agencies.as_user(agencies.c, "analyst") as analyst:
        detail = analyst.get_message(forwarded.message_id)
    assert detail.notice.body == red.body
    assert list(detail.notice.readers) == ["analyst"]
    assert detail.forwarded_from.forwarded_by == "ops"


def test_what_cannot_be_forwarded(agencies: Agencies) -> None:
    original = _received_at_b(agencies, _notice("FWD-NOT", notice_pb2.TLP_GREEN))
    with Inspector(agencies.b.home) as inspector:
        before = inspector.count_messages(Direction.OUTBOUND)
    with agencies.b.client() as client:
        with pytest.raises(RequestRejected, match="sent this notice: it holds it already"):
            client.forward(original, A_ID)
        with pytest.raises(RequestRejected, match=r"XX\.NOT\.PINNED is not a pinned peer"):
            client.forward(original, "XX.NOT.PINNED")
        with Inspector(agencies.b.home) as inspector:  # neither forward nor acknowledgement
            assert inspector.count_messages(Direction.OUTBOUND) == before
        forwarded = client.forward(original, C_ID)
        assert client.get_status(forwarded.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )
    with Inspector(agencies.c.home) as inspector:
        before = inspector.count_messages(Direction.OUTBOUND)
    with (
        agencies.c.client() as client,
        pytest.raises(RequestRejected, match="only a case notice received from its originator"),
    ):
        client.forward(forwarded.message_id, D_ID)  # a forward is not forwarded again
    with Inspector(agencies.c.home) as inspector:
        assert inspector.count_messages(Direction.OUTBOUND) == before


def test_a_receiver_that_does_not_pin_the_originator_says_so(agencies: Agencies) -> None:
    original = _received_at_b(agencies, _notice("FWD-D", notice_pb2.TLP_CLEAR))
    with agencies.b.client() as client:
        forwarded = client.forward(original, D_ID)
        assert client.get_status(forwarded.message_id, wait_seconds=WAIT).state == (
            node_pb2.MESSAGE_STATE_DELIVERED
        )
    with agencies.d.client() as client:
        origin = client.get_message(forwarded.message_id).forwarded_from
    assert origin.originator == A_ID
    assert not origin.originator_signature_verified


def test_an_idempotent_forward_is_sent_once(agencies: Agencies) -> None:
    original = _received_at_b(agencies, _notice("FWD-ONCE", notice_pb2.TLP_GREEN))
    with agencies.b.client() as client:
        first = client.forward(original, C_ID, idempotency_key="fwd-once-1")
        again = client.forward(original, C_ID, idempotency_key="fwd-once-1")
        assert again.message_id == first.message_id
        with pytest.raises(RequestRejected, match="another request"):
            client.forward(original, D_ID, idempotency_key="fwd-once-1")


# A forwarder that breaks the rules: the receiver refuses, stores nothing.


def _original(
    a: NodeIdentity, b: NodeIdentity, notice: notice_pb2.CaseNotice
) -> notice_pb2.Forward:
    """What a real forward from B would carry of a notice A sealed to B."""
    sealed = seal_notice(
        complete(notice, a.agency_id), sender=a, recipient=b.card, ttl=dt.timedelta(days=1)
    )
    header, content, signature = reopen_signed_content(
        sealed.envelope, {b.card.encryption_key_id: b.decryption_key}
    )
    return notice_pb2.Forward(
        original_header=header,
        original_content=content,
        original_signature=signature,
        forwarded_by="admin",
    )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("strict-without-consent", R.REJECT_REASON_FORWARD_NOT_ALLOWED),
        ("altered-notice", R.REJECT_REASON_INVALID_FORWARD),
        ("forged-signature", R.REJECT_REASON_INVALID_FORWARD),
        ("own-notice-back", R.REJECT_REASON_INVALID_FORWARD),
        ("unknown-key-id", R.REJECT_REASON_INVALID_FORWARD),
        ("red-without-readers", R.REJECT_REASON_INVALID_FORWARD),
        ("not-parsing", R.REJECT_REASON_INVALID_FORWARD),
    ],
)
def test_a_receiver_refuses_a_forward_that_breaks_the_rules(
    agencies: Agencies, tamper: str, reason: int
) -> None:
    a, b, c = (node.home.identity() for node in (agencies.a, agencies.b, agencies.c))
    notice = _notice("HOSTILE", notice_pb2.TLP_GREEN)
    if tamper == "strict-without-consent":
        notice.handling = notice_pb2.TLP_AMBER_STRICT
        notice.forwardable_to.append(D_ID)
    if tamper == "red-without-readers":
        notice.handling = notice_pb2.TLP_RED
        notice.readers.append("ops")
        notice.forwardable_to.append(C_ID)
    forward = _original(c if tamper == "own-notice-back" else a, b, notice)
    if tamper == "altered-notice":
        changed = notice_pb2.CaseNotice.FromString(forward.original_content)
        changed.subject = "Words the originator never wrote"
        forward.original_content = changed.SerializeToString()
    if tamper == "unknown-key-id":  # a made-up notice put in the mouth of a pinned A
        header = envelope_pb2.EnvelopeHeader.FromString(forward.original_header)
        header.sender_signing_key_id = "00" * 16
        forward.original_header = header.SerializeToString()
    if tamper == "forged-signature":
        forward.original_signature = b.signing_key.sign(b"anything")
    content = b"\xff not a forward" if tamper == "not-parsing" else forward.SerializeToString()
    sealed = seal_content(
        content,
        content_type=FORWARD_CONTENT_TYPE,
        sender=b,
        recipient=c.card,
        ttl=dt.timedelta(days=1),
    )
    with Inspector(agencies.c.home) as inspector:
        before = inspector.count_messages(Direction.INBOUND)
    channel = peer_channel(b, c.card)
    try:
        receipt = deliver_checked(channel, sealed.envelope, c.card)
    finally:
        channel.close()
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert receipt.reason == reason
    with Inspector(agencies.c.home) as inspector:
        assert inspector.count_messages(Direction.INBOUND) == before
        rejected = [e for e in inspector.audit_since(0) if e.message_id == sealed.header.message_id]
    assert [e.event for e in rejected] == ["rejected"]


# The rules themselves.


def test_handling_decides_where_a_notice_may_go() -> None:
    for handling in (notice_pb2.TLP_CLEAR, notice_pb2.TLP_GREEN, notice_pb2.TLP_AMBER):
        assert may_forward(_notice("X", handling), C_ID)
    for handling in (notice_pb2.TLP_AMBER_STRICT, notice_pb2.TLP_RED):
        assert not may_forward(_notice("X", handling), C_ID)
        assert may_forward(_notice("X", handling, forwardable_to=(C_ID,)), C_ID)
        assert not may_forward(_notice("X", handling, forwardable_to=(D_ID,)), C_ID)


def test_forwardable_to_names_agencies() -> None:
    notice = complete(_notice("X", notice_pb2.TLP_GREEN, forwardable_to=("not an id",)), A_ID)
    assert "forwardable_to 1 is not an agency id" in notice_problems(notice)
    notice.ClearField("forwardable_to")
    notice.forwardable_to.extend([C_ID] * 33)
    assert notice_problems(notice) == ["more than 32 forwardable_to"]


def test_a_forward_acknowledgement_names_where_it_went() -> None:
    ack = notice_pb2.Acknowledgement(
        message_id="0190f0d2-4a6e-7c3b-8f00-000000000001", status=notice_pb2.ACK_STATUS_FORWARDED
    )
    ack.at.FromDatetime(dt.datetime(2026, 11, 29, tzinfo=dt.UTC))
    assert acknowledgement_problems(ack) == [
        "a forward's acknowledgement names an agency id and a message id"
    ]
    ack.forwarded_to, ack.forward_id = C_ID, "0190f0d2-4a6e-7c3b-8f00-000000000002"
    assert acknowledgement_problems(ack) == []
    ack.status = notice_pb2.ACK_STATUS_ACKNOWLEDGED
    assert acknowledgement_problems(ack) == [
        "only a forward's acknowledgement names where it was forwarded"
    ]


def test_parse_forward_names_what_is_wrong(tmp_path: Path) -> None:
    a, b = make_home(tmp_path, A_ID).identity(), make_home(tmp_path, B_ID).identity()
    forward = _original(a, b, _notice("X", notice_pb2.TLP_GREEN))
    forwarded, problems = parse_forward(forward, forwarder=B_ID)
    assert problems == []
    assert forwarded is not None
    assert forwarded.originator == A_ID
    assert forwarded.signed_by(a.card.signing_key)
    assert not forwarded.signed_by(b.card.signing_key)
    _, problems = parse_forward(forward, forwarder=C_ID)
    assert problems == ["the original was not sent to the forwarder"]
    forward.forwarded_by = "Not A Name"
    forward.comment = "line\u202eleft"
    _, problems = parse_forward(forward, forwarder=B_ID)
    assert problems == [
        "comment contains control character U+202E",
        "forwarded_by is not an identity name",
    ]
