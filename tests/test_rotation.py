"""Key rotation over the exchange, end to end between two running nodes.

B rotates (as ``liaison keys rotate`` does, from outside the running node)
while notices flow both ways. A learns B's new card from B's own announcement,
signed by the card A pins; nothing is lost, refused or doubled; once every
peer has the new card and the window has passed, B's old keys are gone and
what is sealed or signed with them is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, update

from liaison.keys.content_types import CARD_UPDATE_CONTENT_TYPE, CASE_NOTICE_CONTENT_TYPE
from liaison.keys.envelope import seal_notice
from liaison.keys.keystore import DESTROYED, RETIRING, KeyChange, OpenedKeys
from liaison.keys.sealed import Passphrase
from liaison.server.home import NodeHome
from liaison.server.rotation import Rotated, rotate_keys
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import AuditEvent, Direction, Message, Peer
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2, node_pb2
from tests.conftest import (
    TEST_PASSPHRASE,
    Inspector,
    RunningNode,
    deliver_checked,
    make_home,
    peer_channel,
    pin_each_other,
)
from tests.notices import complete, sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 60
DELIVERED = node_pb2.MESSAGE_STATE_DELIVERED


@dataclass
class Pair:
    a_home: NodeHome
    b_home: NodeHome
    a: RunningNode
    b: RunningNode


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        yield Pair(a_home, b_home, a, b)
    finally:
        a.stop()
        b.stop()


def rotate(home: NodeHome, *kinds: str) -> Rotated:
    """What ``liaison keys rotate`` does: another process, beside the running node."""
    outside = NodeHome.unlocked(home.path, Passphrase(TEST_PASSPHRASE))
    config = outside.config()
    store = outside.open_store(config)
    try:
        return rotate_keys(
            outside,
            store,
            frozenset(kinds),
            storage=outside.storage_key(),
            limits=config.limits,
            actor="test",
        )
    finally:
        store.close()


def send(node: RunningNode, recipient: str, count: int, tag: str) -> list[str]:
    with node.client() as client:
        return [
            client.send_notice(recipient, sample_notice(f"{tag}-{number}")).message_id
            for number in range(count)
        ]


def wait_delivered(node: RunningNode, message_ids: list[str]) -> None:
    with node.client() as client:
        for message_id in message_ids:
            status = client.get_status(message_id, wait_seconds=WAIT)
            assert status.state == DELIVERED, (message_id, status)


def message_ids(home: NodeHome, direction: Direction, peer: str, content_type: str) -> list[str]:
    """Ids of ``home``'s messages of ``content_type`` to or from ``peer``, in storage order."""
    column = Message.recipient if direction is Direction.OUTBOUND else Message.sender
    store = Store(home.database_url())
    try:
        with store.read() as session:
            query = select(Message.message_id).where(
                Message.direction == direction.value,
                column == peer,
                Message.content_type == content_type,
            )
            return list(session.scalars(query.order_by(Message.id)))
    finally:
        store.close()


def announcement_id(home: NodeHome, recipient: str) -> str:
    (found,) = message_ids(home, Direction.OUTBOUND, recipient, CARD_UPDATE_CONTENT_TYPE)
    return found


def inbound_ids(home: NodeHome, sender: str) -> list[str]:
    return message_ids(home, Direction.INBOUND, sender, CASE_NOTICE_CONTENT_TYPE)


def events(home: NodeHome, kind: AuditKind) -> list[AuditEvent]:
    with Inspector(home) as inspector:
        return [event for event in inspector.audit_since(0) if event.event == kind.value]


@pytest.mark.parametrize(
    "kinds",
    [("signing",), ("encryption",), ("tls",), ("signing", "encryption", "tls")],
    ids=["signing", "encryption", "tls", "all"],
)
def test_notices_flow_both_ways_through_a_rotation(pair: Pair, kinds: tuple[str, ...]) -> None:
    old_b = pair.b_home.identity()
    before = send(pair.a, B_ID, 5, "a-before"), send(pair.b, A_ID, 5, "b-before")

    rotated = rotate(pair.b_home, *kinds)
    assert rotated.sequence == 1
    # The running node reloads its key store every second and announces a new card
    # itself: it may queue the announcement before the command does (never both; the
    # card reaching A is checked below). CI saw the node first once.
    assert rotated.announced in ([A_ID], [])
    # Sent while the announcement may still be on its way: B signs them as the card A pins.
    during = send(pair.a, B_ID, 5, "a-during"), send(pair.b, A_ID, 5, "b-during")

    wait_delivered(pair.b, [announcement_id(pair.b_home, A_ID)])
    new_b = pair.b_home.identity()
    assert new_b.card.sequence == 1
    a_pins = Store(pair.a_home.database_url())
    try:
        pinned = a_pins.pinned_peer(B_ID)
    finally:
        a_pins.close()
    assert pinned is not None
    assert pinned.card.signed_card == new_b.card.signed_card
    assert pinned.previous is not None
    assert pinned.previous.signed_card == old_b.card.signed_card

    after = send(pair.a, B_ID, 5, "a-after"), send(pair.b, A_ID, 5, "b-after")
    to_b = before[0] + during[0] + after[0]
    to_a = before[1] + during[1] + after[1]
    wait_delivered(pair.a, to_b)
    wait_delivered(pair.b, to_a)
    # Each stored exactly once on the receiving side: none lost, refused or doubled.
    assert sorted(inbound_ids(pair.b_home, A_ID)) == sorted(to_b)
    assert sorted(inbound_ids(pair.a_home, B_ID)) == sorted(to_a)

    # The audit trails tell the story on both sides.
    assert [e.detail.split()[0] for e in events(pair.b_home, AuditKind.KEY_ROTATED)] == sorted(
        {"signing": ["signing"], "encryption": ["kem-mlkem768", "kem-x25519"], "tls": ["tls"]}[
            kind
        ][index]
        for kind in kinds
        for index in range({"signing": 1, "encryption": 2, "tls": 1}[kind])
    )
    assert [e.peer for e in events(pair.b_home, AuditKind.CARD_ANNOUNCED)] == [A_ID]
    assert [e.peer for e in events(pair.b_home, AuditKind.CARD_ACCEPTED_BY_PEER)] == [A_ID]
    updated = events(pair.a_home, AuditKind.PEER_CARD_UPDATED)
    assert [e.peer for e in updated] == [B_ID]
    assert old_b.card.fingerprint.replace(" ", "") in (updated[0].detail or "")
    assert new_b.card.fingerprint.replace(" ", "") in (updated[0].detail or "")


def test_a_post_quantum_node_rotates_both_signing_keys(tmp_path: Path) -> None:
    a_home = make_home(tmp_path, A_ID, mldsa65=True)
    b_home = make_home(tmp_path, B_ID, mldsa65=True)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        old = b_home.identity().card
        rotated = rotate(b_home, "signing")
        assert {entry.role for entry in rotated.replaced} == {"signing", "signing-mldsa65"}
        wait_delivered(b, [announcement_id(b_home, A_ID)])
        store = Store(a_home.database_url())
        try:
            pinned = store.pinned_peer(B_ID)
        finally:
            store.close()
        assert pinned is not None
        assert pinned.card.sequence == 1
        assert pinned.card.post_quantum_signed
        assert pinned.card.mldsa65_key is not None
        assert old.mldsa65_key is not None
        assert pinned.card.mldsa65_key.public_bytes_raw() != old.mldsa65_key.public_bytes_raw()
        wait_delivered(b, send(b, A_ID, 3, "pq-after"))
    finally:
        a.stop()
        b.stop()


def test_after_the_window_the_old_keys_are_gone_and_refused(pair: Pair) -> None:
    old_b = pair.b_home.identity()
    rotate(pair.b_home, "signing", "encryption", "tls")
    wait_delivered(pair.b, [announcement_id(pair.b_home, A_ID)])
    a_identity = pair.a_home.identity()
    new_b_card = pair.b_home.identity().card

    # B settles: every peer has card 1 (its housekeeping would do this within a second).
    pair.b.run(pair.b.node.rotation_round())

    # Within the window: an envelope A sealed to B's old key before it learnt the new
    # one still opens, and one B signed with its old key before A had the new card
    # is still accepted by A.
    with peer_channel(a_identity, new_b_card) as channel:
        late = seal_notice(
            complete(sample_notice("sealed-to-old"), A_ID),
            sender=a_identity,
            recipient=old_b.card,
            ttl=dt.timedelta(hours=1),
        )
        receipt = deliver_checked(channel, late.envelope, new_b_card)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED

    # The old signing and TLS keys went at once, the old decryption key is dated; once
    # the window has passed it goes too.
    entries = {(e.role, e.key_id): e for e in pair.b_home.keys.entries()}
    old_kem = entries[("kem-mlkem768", old_b.card.encryption_key_id)]
    assert entries[("signing", old_b.card.signing_key_id)].state == DESTROYED
    assert entries[("tls", old_b.card.tls_fingerprint)].state == DESTROYED
    assert old_kem.state == RETIRING
    assert old_kem.retire_after is not None
    pair.b.run(pair.b.node.rotation_round(now=old_kem.retire_after + dt.timedelta(seconds=1)))

    entries = {(e.role, e.key_id): e for e in pair.b_home.keys.entries()}
    for role in ("kem-mlkem768", "kem-x25519"):
        gone = entries[(role, old_b.card.encryption_key_id)]
        assert gone.state == DESTROYED
        assert not (pair.b_home.keys.current() / gone.file).exists()
    assert [e.state for e in entries.values() if e.state != DESTROYED].count(RETIRING) == 0
    # Nothing of the old keys is left anywhere in the home: only manifest entries name them.
    destroyed_files = {e.file for e in entries.values() if e.state == DESTROYED}
    present = {path.name for path in pair.b_home.keys.folder.rglob("*")}
    assert not destroyed_files & present
    assert len(events(pair.b_home, AuditKind.KEY_DESTROYED)) == 4

    with peer_channel(a_identity, new_b_card) as channel:
        stale = seal_notice(
            complete(sample_notice("sealed-to-old-after"), A_ID),
            sender=a_identity,
            recipient=old_b.card,
            ttl=dt.timedelta(hours=1),
        )
        before = inbound_ids(pair.b_home, A_ID)
        receipt = deliver_checked(channel, stale.envelope, new_b_card)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert receipt.reason == envelope_pb2.REJECT_REASON_UNKNOWN_ENCRYPTION_KEY
    assert inbound_ids(pair.b_home, A_ID) == before

    # A's window for B's old card ends too: B's old signing key is then refused.
    _end_window(pair.a_home, B_ID)
    pair.a.run(_refresh(pair.a))
    forged = seal_notice(
        complete(sample_notice("signed-with-old"), B_ID),
        sender=old_b,
        recipient=pair.a.card,
        ttl=dt.timedelta(hours=1),
    )
    with peer_channel(pair.b.identity, pair.a.card) as channel:
        receipt = deliver_checked(channel, forged.envelope, pair.a.card)
    assert receipt.reason == envelope_pb2.REJECT_REASON_UNKNOWN_SIGNING_KEY


async def _refresh(node: RunningNode) -> None:
    assert node.node is not None
    node.node.peers.refresh()


def _end_window(home: NodeHome, agency_id: str) -> None:
    """The grace period of ``agency_id``'s previous card has passed (moved, not waited)."""
    store = Store(home.database_url())
    try:
        with store.write() as session:
            session.execute(
                update(Peer)
                .where(Peer.agency_id == agency_id)
                .values(previous_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
            )
    finally:
        store.close()


def test_a_key_store_switched_while_it_is_read_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the rotation test under load: `card export`, or the node reloading its
    keys, read a generation that a retirement had just switched away and deleted."""
    home = NodeHome.unlocked(make_home(tmp_path, A_ID).path, Passphrase(TEST_PASSPHRASE))
    opened_first = NodeHome.open_keys
    switched: list[str] = []

    def open_then_switch(self: NodeHome) -> OpenedKeys:
        opened = opened_first(self)
        if not switched:  # another process writes a new generation right after
            assert self.unlocker is not None
            self.keys.change(self.unlocker, KeyChange)
            switched.append(self.keys.generation())
        return opened

    monkeypatch.setattr(NodeHome, "open_keys", open_then_switch)
    ring = home.keyring()
    assert ring.generation == switched[0] == home.keys.generation()
