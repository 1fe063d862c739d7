"""Two real nodes exchange notices over real mutual TLS on loopback."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from liaison.client.demo import free_port
from liaison.client.errors import MessageNotFound, RequestRejected
from liaison.keys.envelope import verify_receipt
from liaison.server.config import CONFIG_FILE
from liaison.server.home import NodeHome, init_home
from liaison.server.store.models import Direction
from liaison.v1 import envelope_pb2, node_pb2
from tests.conftest import TEST_KEYS, Inspector, RunningNode, deliver_raw, peer_channel, pin
from tests.forge import Forge
from tests.notices import complete, sample_notice

WAIT = 30


def test_notice_round_trip_both_ways(pair: tuple[RunningNode, RunningNode]) -> None:
    a, b = pair
    attachment = bytes(range(256)) * 64
    with a.client() as client_a, b.client() as client_b:
        sent = client_a.send_notice(
            b.card.agency_id, sample_notice("A-1", attachment=attachment), wait_seconds=WAIT
        )
        assert sent.state == "delivered"
        reply = client_b.send_notice(a.card.agency_id, sample_notice("B-1"), wait_seconds=WAIT)
        assert reply.state == "delivered"

        inbox_b = client_b.list_messages(node_pb2.DIRECTION_INBOUND)
        assert [m.message_id for m in inbox_b] == [sent.message_id]
        assert inbox_b[0].peer == a.card.agency_id
        assert inbox_b[0].state == node_pb2.MESSAGE_STATE_RECEIVED

        received = client_b.get_message(sent.message_id)
        assert received.notice.case_reference == "A-1"
        assert received.notice.attachments[0].content == attachment
        assert received.notice.originator.agency_id == a.card.agency_id
        assert received.receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED

        outbound = client_a.get_message(sent.message_id)
        assert outbound.notice == received.notice
        assert outbound.envelope_sha256 == received.envelope_sha256
        assert outbound.receipt.receiver == b.card.agency_id

        status = client_a.get_status(sent.message_id)
        events = [e.event for e in status.timeline]
        assert events[:4] == ["sealed", "sent", "receipt-verified", "delivered"]
        # B's operator opened it: B's read notification follows (if it has arrived yet).
        assert events[4:] in ([], ["acknowledged-by-peer"])
        assert [e.event for e in client_b.get_status(sent.message_id).timeline] == [
            "received",
            "receipt-issued",
            "read",
        ]


def test_a_notice_over_grpcs_default_4_mib_is_read_back_on_both_sides(
    pair: tuple[RunningNode, RunningNode],
) -> None:
    a, b = pair
    attachment = bytes(range(256)) * (6 * 4096)  # 6 MiB
    with a.client() as client_a, b.client() as client_b:
        sent = client_a.send_notice(
            b.card.agency_id, sample_notice("A-6M", attachment=attachment), wait_seconds=WAIT
        )
        assert sent.state == "delivered"
        for client in (client_a, client_b):
            assert client.get_message(sent.message_id).notice.attachments[0].content == attachment


def test_sender_stores_the_receipt_signed_by_the_receiver(
    pair: tuple[RunningNode, RunningNode],
) -> None:
    a, b = pair
    with a.client() as client_a:
        sent = client_a.send_notice(b.card.agency_id, sample_notice(), wait_seconds=WAIT)
    found = a.node.store.message(sent.message_id)  # type: ignore[union-attr]
    assert found is not None
    message, receipt = found
    assert receipt is not None
    verified = verify_receipt(
        receipt.signed_receipt,
        issuer=b.card,
        message_id=sent.message_id,
        sender=a.card.agency_id,
        envelope_sha256=bytes.fromhex(message.envelope_sha256),
    )
    assert verified.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED


def test_delivery_waits_for_a_peer_that_is_down_then_delivers_once(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    home_a, home_b = homes
    a = node_factory(home_a)
    with a.client() as client_a:
        queued = client_a.send_notice("DE.BPOL.LO-RABAT", sample_notice(), wait_seconds=2)
        assert queued.state in {"queued", "sent"}
        node_factory(home_b)
        status = client_a.get_status(queued.message_id, wait_seconds=WAIT)
    assert status.state == node_pb2.MESSAGE_STATE_DELIVERED
    events = [e.event for e in status.timeline]
    assert "delivery-retry" in events
    assert events[-1] == "delivered"
    with Inspector(home_b) as inspector:
        assert inspector.count_messages(Direction.INBOUND) == 1


def test_a_restarted_node_keeps_its_messages(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    home_a, home_b = homes
    a, b = node_factory(home_a), node_factory(home_b)
    with a.client() as client_a:
        sent = client_a.send_notice("DE.BPOL.LO-RABAT", sample_notice(), wait_seconds=WAIT)
    b.stop()
    b_again = node_factory(home_b)
    with b_again.client() as client_b:
        assert client_b.get_message(sent.message_id).notice.case_reference == "CASE-1"


def test_send_to_an_unpinned_agency_is_refused(pair: tuple[RunningNode, RunningNode]) -> None:
    a, _ = pair
    with a.client() as client_a, pytest.raises(RequestRejected, match="not a pinned peer"):
        client_a.send_notice("FR.DGPN.SCCOPOL", sample_notice())
    with Inspector(a.home) as inspector:
        assert inspector.count_messages() == 0


def test_an_invalid_notice_is_refused_before_sealing(pair: tuple[RunningNode, RunningNode]) -> None:
    a, b = pair
    notice = sample_notice()
    notice.ClearField("category")
    with a.client() as client_a, pytest.raises(RequestRejected, match="category"):
        client_a.send_notice(b.card.agency_id, notice)


def test_unknown_message_id(pair: tuple[RunningNode, RunningNode]) -> None:
    a, _ = pair
    with a.client() as client_a, pytest.raises(MessageNotFound):
        client_a.get_status("01a22488-44ca-7885-9083-b9635c2e4917")


def test_a_rejection_without_a_message_id_still_fails_the_message(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    """The receiver refuses an oversized envelope unread; the sender must not retry forever."""
    home_a, home_b = homes
    config = home_b.path / CONFIG_FILE
    config.write_text(
        config.read_text().replace("max_envelope_bytes = 16777216", "max_envelope_bytes = 65536")
    )
    a, _ = node_factory(home_a), node_factory(home_b)
    with a.client() as client_a:
        sent = client_a.send_notice(
            "DE.BPOL.LO-RABAT", sample_notice(attachment=bytes(100_000)), wait_seconds=WAIT
        )
        detail = client_a.get_message(sent.message_id)
    assert sent.state == "failed"
    assert detail.receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert detail.receipt.reason == envelope_pb2.REJECT_REASON_TOO_LARGE
    assert detail.receipt.message_id == ""
    assert [e.event for e in detail.timeline][-2:] == ["receipt-verified", "rejected-by-peer"]


def test_logs_never_hold_content(
    pair: tuple[RunningNode, RunningNode], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    notice = sample_notice()
    caplog.set_level(logging.DEBUG)
    with a.client() as client_a:
        client_a.send_notice(b.card.agency_id, notice, wait_seconds=WAIT)
    assert "received" in caplog.text  # the node did log the exchange
    for secret in (notice.body, notice.subject, notice.subjects[0].name, notice.case_reference):
        assert secret not in caplog.text


def test_a_notice_the_peer_never_takes_expires(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    home_a, _ = homes  # the peer is pinned and never started
    a = node_factory(home_a)
    with a.client() as client_a:
        queued = client_a.send_notice("DE.BPOL.LO-RABAT", sample_notice(), ttl_seconds=2)
        status = client_a.get_status(queued.message_id, wait_seconds=WAIT)
    assert status.state == node_pb2.MESSAGE_STATE_EXPIRED
    events = [e.event for e in status.timeline]
    assert events[0] == "sealed"
    assert "delivery-retry" in events
    assert events[-1] == "expired"


def test_the_sender_refuses_a_server_that_is_not_the_pinned_peer(
    tmp_path: Path,
    homes: tuple[NodeHome, NodeHome],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    """Another node answers at the peer's endpoint: its certificate is not the pinned one."""
    home_a, home_b = homes
    endpoint = home_b.config().endpoint
    impostor = init_home(
        tmp_path / "impostor",
        agency_id="DE.BPOL.LO-RABAT",
        name="Impostor",
        endpoint=endpoint,
        peer_listen=endpoint,
        api_listen=f"127.0.0.1:{free_port()}",
        **TEST_KEYS,
    )
    pin(impostor, home_a.identity().card)  # it would gladly take A's notices
    a = node_factory(home_a)
    node_factory(impostor)
    with a.client() as client_a:
        sent = client_a.send_notice("DE.BPOL.LO-RABAT", sample_notice(), wait_seconds=3)
        timeline = client_a.get_status(sent.message_id).timeline
    assert sent.state in {"queued", "sent"}
    assert any(e.event == "delivery-retry" and "UNAVAILABLE" in e.detail for e in timeline)
    with Inspector(impostor) as inspector:
        assert inspector.count_messages() == 0


def test_a_peer_reusing_one_of_our_message_ids_does_not_mix_into_our_message(
    pair: tuple[RunningNode, RunningNode],
) -> None:
    """Message ids are unique per sender: a peer may reuse ours; our views stay ours."""
    a, b = pair
    with b.client() as client_b:
        ours = client_b.send_notice(a.card.agency_id, sample_notice("B-OWN"), wait_seconds=WAIT)
        theirs = Forge(
            sender=a.identity,
            recipient=b.card,
            notice=complete(sample_notice("A-REUSED"), a.card.agency_id),
            now=dt.datetime.now(dt.UTC),
            message_id=ours.message_id,
        ).build()
        channel = peer_channel(a.identity, b.card)
        try:
            receipt = envelope_pb2.SignedReceipt.FromString(deliver_raw(channel, theirs))
        finally:
            channel.close()
        assert envelope_pb2.Receipt.FromString(receipt.receipt).status == (
            envelope_pb2.RECEIPT_STATUS_ACCEPTED
        )
        shown = client_b.get_message(ours.message_id)
        status = client_b.get_status(ours.message_id)
    assert shown.summary.direction == node_pb2.DIRECTION_OUTBOUND
    assert shown.notice.case_reference == "B-OWN"
    assert [e.event for e in status.timeline] == ["sealed", "sent", "receipt-verified", "delivered"]
