"""A notice's working life after delivery: read, acknowledged, answered, on both sides.

Acknowledgements and replies are messages of their own (sealed envelopes of
their own content types, delivered by the outbox, each with its receipt); a
node refuses one that answers a message it did not send to that peer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.client.errors import RequestRejected
from liaison.keys.content_types import ACKNOWLEDGEMENT_CONTENT_TYPE, REPLY_CONTENT_TYPE
from liaison.keys.envelope import seal_content
from liaison.server.config import CONFIG_FILE
from liaison.server.home import NodeHome
from liaison.v1 import envelope_pb2, node_pb2, notice_pb2
from tests.conftest import (
    Inspector,
    RunningNode,
    deliver_checked,
    make_home,
    peer_channel,
    pin,
    pin_each_other,
)
from tests.notices import complete, sample_notice

A_ID, B_ID, C_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT", "FR.DGPN.SCCOPOL"
WAIT = 60
S = node_pb2


@dataclass
class Pair:
    a_home: NodeHome
    b_home: NodeHome
    a: RunningNode
    b: RunningNode


@pytest.fixture
def pair(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    if getattr(request, "param", None) == "private-reads":
        path = b_home.path / CONFIG_FILE
        text = path.read_text(encoding="utf-8")
        path.write_text(
            re.sub(r"(?m)^disclose_reads = true$", "disclose_reads = false", text),
            encoding="utf-8",
        )
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        yield Pair(a_home, b_home, a, b)
    finally:
        a.stop()
        b.stop()


def delivered_notice(pair: Pair, notice: notice_pb2.CaseNotice | None = None) -> str:
    with pair.a.client() as client:
        sent = client.send_notice(B_ID, notice or sample_notice("LIFE-1"), wait_seconds=WAIT)
    assert sent.state == "delivered"
    return sent.message_id


def wait_delivered(node: RunningNode, message_id: str) -> None:
    with node.client() as client:
        assert client.get_status(message_id, wait_seconds=WAIT).state == S.MESSAGE_STATE_DELIVERED


def state(node: RunningNode, message_id: str) -> int:
    with node.client() as client:
        return client.get_status(message_id).state


def outbound_answers(node: RunningNode, message_id: str, content_type: str) -> list[str]:
    with node.client() as client:
        return [
            m.message_id
            for m in client.thread(message_id)
            if m.direction == S.DIRECTION_OUTBOUND and m.content_type == content_type
        ]


def test_opening_a_notice_tells_its_sender_and_acknowledging_it_goes_further(pair: Pair) -> None:
    notice_id = delivered_notice(pair)
    assert state(pair.b, notice_id) == S.MESSAGE_STATE_RECEIVED

    with pair.b.client() as client:
        client.get_message(notice_id)  # an operator opens it
    assert state(pair.b, notice_id) == S.MESSAGE_STATE_READ
    (read,) = outbound_answers(pair.b, notice_id, ACKNOWLEDGEMENT_CONTENT_TYPE)
    wait_delivered(pair.b, read)
    assert state(pair.a, notice_id) == S.MESSAGE_STATE_READ

    with pair.b.client() as client:
        client.get_message(notice_id)  # opened again: no second read notification
        acted = client.acknowledge(
            notice_id, notice_pb2.ACK_STATUS_ACTION_TAKEN, comment="Shipment seized."
        )
    wait_delivered(pair.b, acted.message_id)
    assert state(pair.b, notice_id) == S.MESSAGE_STATE_ACTION_TAKEN
    assert state(pair.a, notice_id) == S.MESSAGE_STATE_ACTION_TAKEN
    assert outbound_answers(pair.b, notice_id, ACKNOWLEDGEMENT_CONTENT_TYPE) == [
        read,
        acted.message_id,
    ]

    with pair.a.client() as client:
        timeline = [e.event for e in client.get_status(notice_id).timeline]
        thread = client.thread(notice_id)
    assert timeline.count("acknowledged-by-peer") == 2
    assert [m.message_id for m in thread] == [notice_id, read, acted.message_id]
    assert all(m.refers_to == notice_id for m in thread[1:])
    # The comment travels sealed; it is never in the audit trail.
    with Inspector(pair.a_home) as inspector:
        assert not any("seized" in (e.detail or "") for e in inspector.audit_since(0))


@pytest.mark.parametrize("pair", ["private-reads"], indirect=True)
def test_a_node_that_does_not_disclose_reads_keeps_read_local(pair: Pair) -> None:
    notice_id = delivered_notice(pair)
    with pair.b.client() as client:
        client.get_message(notice_id)
    assert state(pair.b, notice_id) == S.MESSAGE_STATE_READ
    assert outbound_answers(pair.b, notice_id, ACKNOWLEDGEMENT_CONTENT_TYPE) == []
    assert state(pair.a, notice_id) == S.MESSAGE_STATE_DELIVERED


def test_a_reply_carries_the_case_over_and_may_only_tighten_handling(pair: Pair) -> None:
    notice_id = delivered_notice(pair)
    with pair.b.client() as client:
        with pytest.raises(RequestRejected, match="never loosen"):
            client.reply(notice_id, notice_pb2.CaseNotice(body="x", handling=notice_pb2.TLP_GREEN))
        answer = client.reply(notice_id, notice_pb2.CaseNotice(body="We hold two of the suspects."))
    wait_delivered(pair.b, answer.message_id)
    assert state(pair.b, notice_id) == S.MESSAGE_STATE_REPLIED

    with pair.a.client() as client:
        received = client.get_message(answer.message_id)
        timeline = [e.event for e in client.get_status(notice_id).timeline]
    original = sample_notice("LIFE-1")
    assert received.summary.content_type == REPLY_CONTENT_TYPE
    assert received.summary.refers_to == notice_id
    assert received.notice.case_reference == original.case_reference
    assert received.notice.category == original.category
    assert received.notice.handling == original.handling
    assert received.notice.subject == f"Re: {original.subject}"
    assert received.notice.body == "We hold two of the suspects."
    assert "replied-by-peer" in timeline
    # A can answer the reply in turn: the conversation stays one thread.
    with pair.a.client() as client:
        again = client.reply(answer.message_id, notice_pb2.CaseNotice(body="Thank you."))
    wait_delivered(pair.a, again.message_id)
    with pair.b.client() as client:
        assert [m.message_id for m in client.thread(again.message_id)][:1] == [notice_id]


def test_an_answer_to_a_message_the_node_did_not_send_that_peer_is_refused(
    pair: Pair,
) -> None:
    """Issue 7: an acknowledgement for an unknown message, from a peer other than the
    original recipient, or for a message of another sender is refused with its own reason."""
    c_home = make_home(pair.a_home.path.parent, C_ID)
    pin(pair.a_home, c_home.identity().card)
    with pair.a.client() as client:
        to_c = client.send_notice(C_ID, sample_notice("TO-C")).message_id  # C never runs
    with pair.b.client() as client:
        from_b = client.send_notice(A_ID, sample_notice("FROM-B"), wait_seconds=WAIT).message_id
    b_identity = pair.b_home.identity()
    cases = {
        "01a22488-44ca-7885-9083-b9635c2e4917": "UNKNOWN_MESSAGE",
        to_c: "NOT_THE_RECIPIENT",
        from_b: "NOT_OUR_MESSAGE",
    }
    with Inspector(pair.a_home) as inspector:
        before = inspector.count_messages()
        seq = inspector.last_audit_seq()
        with peer_channel(b_identity, pair.a.card) as channel:
            for named, reason in cases.items():
                for content_type, content in (
                    (ACKNOWLEDGEMENT_CONTENT_TYPE, _ack(named)),
                    (REPLY_CONTENT_TYPE, _reply(named)),
                ):
                    sealed = seal_content(
                        content,
                        content_type=content_type,
                        sender=b_identity,
                        recipient=pair.a.card,
                        ttl=dt.timedelta(hours=1),
                    )
                    receipt = deliver_checked(channel, sealed.envelope, pair.a.card)
                    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
                    assert envelope_pb2.RejectReason.Name(receipt.reason) == (
                        f"REJECT_REASON_{reason}"
                    )
        assert inspector.count_messages() == before
        rejected = [e.reason for e in inspector.audit_since(seq) if e.event == "rejected"]
    assert rejected == [reason for reason in cases.values() for _ in range(2)]


def _ack(message_id: str) -> bytes:
    ack = notice_pb2.Acknowledgement(message_id=message_id, status=notice_pb2.ACK_STATUS_READ)
    ack.at.FromSeconds(1_795_900_000)
    return ack.SerializeToString()


def _reply(message_id: str) -> bytes:
    notice = complete(sample_notice("FORGED"), B_ID)
    return notice_pb2.Reply(in_reply_to=message_id, notice=notice).SerializeToString()


def test_acknowledging_needs_a_received_notice_and_an_operator_status(pair: Pair) -> None:
    notice_id = delivered_notice(pair)
    with pair.a.client() as client, pytest.raises(Exception, match="no received message"):
        client.acknowledge(notice_id, notice_pb2.ACK_STATUS_ACKNOWLEDGED)  # A sent it
    with pair.b.client() as client:
        with pytest.raises(RequestRejected, match="acknowledged, action-taken or declined"):
            client.acknowledge(notice_id, notice_pb2.ACK_STATUS_READ)
        with pytest.raises(RequestRejected, match="control character"):
            client.acknowledge(notice_id, notice_pb2.ACK_STATUS_DECLINED, comment="\x1b[2J")
    assert outbound_answers(pair.b, notice_id, ACKNOWLEDGEMENT_CONTENT_TYPE) == []


def test_a_retried_acknowledgement_or_reply_is_answered_with_the_first(pair: Pair) -> None:
    """An acknowledgement or a reply retried with its key returns what the first call
    queued (its state has moved on meanwhile), and the key refuses any other request."""
    notice_id = delivered_notice(pair)
    with pair.b.client() as client:
        first = client.acknowledge(
            notice_id, notice_pb2.ACK_STATUS_ACKNOWLEDGED, idempotency_key="ack-1"
        )
        again = client.acknowledge(
            notice_id, notice_pb2.ACK_STATUS_ACKNOWLEDGED, idempotency_key="ack-1"
        )
        assert again.message_id == first.message_id
        with pytest.raises(RequestRejected, match="only moves it on"):
            client.acknowledge(notice_id, notice_pb2.ACK_STATUS_ACKNOWLEDGED)
        with pytest.raises(RequestRejected, match="another request"):
            client.reply(notice_id, notice_pb2.CaseNotice(body="x"), idempotency_key="ack-1")
        answer = notice_pb2.CaseNotice(body="Noted.")
        reply = client.reply(notice_id, answer, idempotency_key="reply-1")
        assert client.reply(notice_id, answer, idempotency_key="reply-1").message_id == (
            reply.message_id
        )
    assert outbound_answers(pair.b, notice_id, REPLY_CONTENT_TYPE) == [reply.message_id]
    assert outbound_answers(pair.b, notice_id, ACKNOWLEDGEMENT_CONTENT_TYPE) == [first.message_id]
