"""Each node witnesses the other's audit log: checkpoints signed and cosigned over the
wire, receipts that name the receiver's log entry, inclusion proofs of one's own
deliveries, and a peer that presents a rewritten history refused, with evidence kept."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, select

from liaison.keys.checkpoint import (
    Checkpoint,
    NoteSignature,
    cosign,
    origin_of,
    parse_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from liaison.keys.errors import CheckpointError
from liaison.keys.identity import NodeIdentity
from liaison.keys.merkle import (
    MemoryTree,
    consistency_proof,
    leaf_hash,
    root,
    verify_inclusion,
)
from liaison.server.checkpoints import (
    COSIGNED_LIMITS,
    _name,
    _verified_cosignature,
    signed_checkpoint,
)
from liaison.server.store.models import (
    AuditCheckpoint,
    AuditEvent,
    CheckpointCosignature,
    PeerCheckpoint,
    Receipt,
    WitnessEvidence,
)
from liaison.server.store.store import Store
from liaison.v1 import audit_pb2, envelope_pb2, peer_pb2, peer_pb2_grpc
from tests.conftest import (
    Inspector,
    RunningNode,
    make_home,
    peer_channel,
    peer_link,
    pin_each_other,
)
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
S = peer_pb2.WitnessStatus
R = peer_pb2.WitnessRefusal


def _count(inspector: Inspector, model: type) -> int:
    with inspector.store.read() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _witnessed(inspector: Inspector, peer: str) -> PeerCheckpoint:
    """The newest checkpoint of ``peer``'s log that ``inspector``'s node cosigned."""
    with inspector.store.read() as session:
        return session.scalars(
            select(PeerCheckpoint)
            .where(PeerCheckpoint.peer == peer)
            .order_by(PeerCheckpoint.size.desc())
            .limit(1)
        ).one()


def _events(inspector: Inspector, kind: str) -> list[AuditEvent]:
    return [event for event in inspector.audit_since(0) if event.event == kind]


def test_peers_cosign_each_other_and_prove_deliveries(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    a_view, b_view = Inspector(a_home), Inspector(b_home)
    try:
        with a.client() as client:
            sent = [
                client.send_notice(B_ID, sample_notice(f"W-{n}"), wait_seconds=60) for n in range(3)
            ]
        assert all(s.state == "delivered" for s in sent)

        first = a.run(a.node.checkpointer.round(force=True))
        assert first is not None
        assert first.cosigners == (B_ID,)
        # B checked A's signature, cosigned, and kept the checkpoint as it received it.
        kept = _witnessed(b_view, A_ID)
        assert (kept.peer, kept.size, kept.root) == (A_ID, first.size, first.root)
        cosigned_by_b = _count(b_view, PeerCheckpoint)
        assert _events(b_view, "checkpoint-cosigned")[-1].peer == A_ID
        # A holds B's cosignature, and it verifies under B's pinned card.
        with a_view.store.read() as session:
            line = session.get_one(CheckpointCosignature, (first.size, B_ID)).line
        note = first.note + line
        signature = parse_note(note).signatures[-1]
        b_card = b_home.identity().card
        verify_cosignature(
            note, signature, name=witness_name(B_ID), ed25519_public=b_card.signing_key
        )
        assert _events(a_view, "checkpoint-cosigned-by-peer")[-1].peer == B_ID

        # The log grows; the next checkpoint is cosigned with a consistency proof.
        with a.client() as client:
            client.send_notice(B_ID, sample_notice("W-3"), wait_seconds=60)
        second = a.run(a.node.checkpointer.round())
        assert second is not None
        assert second.size > first.size
        assert second.cosigners == (B_ID,)
        assert _count(b_view, PeerCheckpoint) == cosigned_by_b + 1
        # Nothing new but bookkeeping: no checkpoint is due.
        assert a.run(a.node.checkpointer.round()) == second

        # B's operator reads a notice: B's own business, though the entry is about A.
        with b.client() as client:
            client.get_message(sent[0].message_id)
        read_entry = _events(b_view, "read")[-1]
        assert read_entry.peer == A_ID
        # B's checkpoints are cosigned by A the same way: A can now prove its deliveries.
        b_checkpoint = b.run(b.node.checkpointer.round(force=True))
        assert b_checkpoint is not None
        assert b_checkpoint.cosigners == (A_ID,)
        with a_view.store.read() as session:
            stored = [r.signed_receipt for r in session.scalars(select(Receipt))]
        # The receipts B issued for A's notices (A also issued one, for B's read notice).
        receipts = [
            signed
            for signed in stored
            if envelope_pb2.Receipt.FromString(
                envelope_pb2.SignedReceipt.FromString(signed).receipt
            ).receiver
            == B_ID
        ]
        witnessed = _witnessed(a_view, B_ID)
        assert witnessed.size == b_checkpoint.size
        assert len(receipts) == 4
        channel = peer_channel(a_home.identity(), b_card)
        stub = peer_pb2_grpc.PeerExchangeStub(channel)
        try:
            for signed in receipts:
                receipt = envelope_pb2.Receipt.FromString(
                    envelope_pb2.SignedReceipt.FromString(signed).receipt
                )
                assert receipt.HasField("log_index")
                answer = stub.ProveInclusion(
                    peer_pb2.InclusionRequest(index=receipt.log_index, tree_size=witnessed.size),
                    timeout=30,
                )
                entry = audit_pb2.AuditEntry.FromString(answer.entry)
                assert (entry.event, entry.peer, entry.message_id) == (
                    "received",
                    A_ID,
                    receipt.message_id,
                )
                assert entry.envelope_sha256 == receipt.envelope_sha256
                assert verify_inclusion(
                    leaf_hash(answer.entry),
                    receipt.log_index,
                    witnessed.size,
                    list(answer.proof),
                    witnessed.root,
                )
            # An entry that is not about A: refused, and audited by B.
            denied_before = len(_events(b_view, "access-denied"))
            with pytest.raises(grpc.RpcError) as refused:
                stub.ProveInclusion(
                    peer_pb2.InclusionRequest(index=0, tree_size=witnessed.size), timeout=30
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert len(_events(b_view, "access-denied")) == denied_before + 1
            # Nor an entry about A that no receipt names (the review found reads leaked).
            with pytest.raises(grpc.RpcError) as local:
                stub.ProveInclusion(
                    peer_pb2.InclusionRequest(index=read_entry.seq - 1, tree_size=witnessed.size),
                    timeout=30,
                )
            assert local.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.RpcError) as beyond:
                stub.ProveInclusion(peer_pb2.InclusionRequest(index=5, tree_size=10**9), timeout=30)
            assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE
        finally:
            channel.close()
    finally:
        a_view.close()
        b_view.close()
        a.stop()
        b.stop()


# A log that only the test holds: A's signing keys, any leaves. The witness sees roots and
# proofs, never entries, so a rewritten history is just another list of leaves.


@dataclass
class ForgedLog:
    identity: NodeIdentity
    leaves: list[bytes]

    def tree(self, size: int | None = None) -> MemoryTree:
        return MemoryTree(self.leaves[: len(self.leaves) if size is None else size])

    def note(self, size: int, *, origin: str | None = None) -> bytes:
        tree = self.tree(size)
        checkpoint = Checkpoint(
            origin=origin or origin_of(self.identity.agency_id),
            size=size,
            root=root(tree, size),
        )
        return sign_checkpoint(
            checkpoint, name=checkpoint.origin, ed25519_key=self.identity.signing_key
        )

    def request(self, old: int, new: int, **note: str) -> peer_pb2.WitnessRequest:
        proof = consistency_proof(self.tree(new), old, new) if 0 < old < new else []
        return peer_pb2.WitnessRequest(
            checkpoint=self.note(new, **note), old_size=old, consistency_proof=proof
        )


def _leaves(tag: str, count: int) -> list[bytes]:
    return [leaf_hash(f"{tag}-{n}".encode()) for n in range(count)]


@dataclass
class Witnessed:
    """B, running and pinning A, has cosigned A's (forged) log at size 10."""

    log: ForgedLog
    channel: grpc.Channel
    view: Inspector
    node: RunningNode

    def peers_changed(self, change: Callable[[Store, dt.datetime], object]) -> None:
        """Change B's pins as an operator would, and have B load them now."""
        store = Store(self.node.home.database_url())
        try:
            change(store, dt.datetime.now(dt.UTC))
        finally:
            store.close()
        self.node.run(asyncio.to_thread(self.node.node.peers.refresh))

    def ask(self, request: peer_pb2.WitnessRequest | bytes) -> peer_pb2.WitnessResponse:
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        call = self.channel.unary_unary(
            "/liaison.v1.PeerExchange/Witness",
            request_serializer=None,
            response_deserializer=peer_pb2.WitnessResponse.FromString,
        )
        response: peer_pb2.WitnessResponse = call(raw)
        return response


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Witnessed]:
    with peer_link(tmp_path, A_ID, B_ID) as link:
        witnessed = Witnessed(
            ForgedLog(link.a, _leaves("history", 10)), link.channel, link.inspector, link.b
        )
        assert witnessed.ask(witnessed.log.request(0, 10)).status == S.WITNESS_STATUS_COSIGNED
        yield witnessed


def test_a_consistent_extension_is_cosigned(
    witness: Witnessed,
) -> None:
    log, view = witness.log, witness.view
    log.leaves += _leaves("later", 7)
    answer = witness.ask(log.request(10, 17))
    assert answer.status == S.WITNESS_STATUS_COSIGNED
    with view.store.read() as session:
        sizes = sorted(row.size for row in session.scalars(select(PeerCheckpoint)))
    assert sizes == [10, 17]
    # The same checkpoint again: the same cosignature, nothing new stored.
    again = witness.ask(log.request(10, 17))
    assert again.cosignature == answer.cosignature
    assert _count(view, PeerCheckpoint) == 2


def test_a_stale_old_size_is_told_the_size_the_witness_knows(
    witness: Witnessed,
) -> None:
    log, view = witness.log, witness.view
    log.leaves += _leaves("later", 5)
    answer = witness.ask(log.request(4, 15))
    assert (answer.status, answer.known_size) == (S.WITNESS_STATUS_CONFLICT, 10)
    assert _count(view, PeerCheckpoint) == 1
    assert witness.ask(log.request(10, 15)).status == S.WITNESS_STATUS_COSIGNED


SPLIT_VIEWS = {
    # A history rewritten from entry 5 on, and grown: the proof from 10 cannot verify.
    "rewritten and grown": ("rewritten", 15, 10, R.WITNESS_REFUSAL_INCONSISTENT),
    # The same size with another root.
    "same size, another root": ("rewritten", 10, 10, R.WITNESS_REFUSAL_INCONSISTENT),
    # A tree smaller than the one cosigned.
    "rolled back": ("history", 8, 10, R.WITNESS_REFUSAL_ROLLBACK),
}


@pytest.mark.parametrize("case", list(SPLIT_VIEWS))
def test_a_rewritten_history_is_refused_and_the_evidence_kept(
    witness: Witnessed, case: str
) -> None:
    log, view = witness.log, witness.view
    history, size, old, refusal = SPLIT_VIEWS[case]
    cosigned = log.note(10)
    if history == "rewritten":
        log.leaves = log.leaves[:5] + _leaves("rewritten", 10)
    before = view.last_audit_seq()
    answer = witness.ask(log.request(old, size))
    assert (answer.status, answer.refusal) == (S.WITNESS_STATUS_REFUSED, refusal)
    assert not answer.cosignature
    # Nothing cosigned; both signed checkpoints kept; the alarm is in the witness's log.
    with view.store.read() as session:
        assert [row.size for row in session.scalars(select(PeerCheckpoint))] == [10]
        evidence = session.scalars(select(WitnessEvidence)).one()
    assert (evidence.peer, evidence.refusal) == (
        A_ID,
        R.Name(refusal).removeprefix("WITNESS_REFUSAL_"),
    )
    card = log.identity.card
    origin = origin_of(A_ID)
    kept = [
        verify_checkpoint(note, origin=origin, name=origin, ed25519_public=card.signing_key)
        for note in (evidence.cosigned_note, evidence.presented_note)
    ]
    assert (kept[0].size, kept[0].root) == (10, parse_note_root(cosigned))
    assert (kept[1].size, kept[1].root) != (kept[0].size, kept[0].root)
    alarms = [e for e in view.audit_since(before) if e.event == "split-view-detected"]
    assert [(e.peer, e.reason) for e in alarms] == [(A_ID, evidence.refusal)]


def parse_note_root(note: bytes) -> bytes:
    return parse_body(parse_note(note).body).root


def _other_key_note(log: ForgedLog, tmp_path: Path) -> bytes:
    stranger = make_home(tmp_path, "XX.OTHER.NODE").identity()
    return ForgedLog(
        dataclasses.replace(log.identity, signing_key=stranger.signing_key),
        log.leaves,
    ).note(12)


REFUSALS = {
    "not a request": (lambda log, tmp: b"\xff\x00garbage", R.WITNESS_REFUSAL_MALFORMED),
    "not a note": (
        lambda log, tmp: peer_pb2.WitnessRequest(checkpoint=b"hello").SerializeToString(),
        R.WITNESS_REFUSAL_MALFORMED,
    ),
    "a short proof hash": (
        lambda log, tmp: peer_pb2.WitnessRequest(
            checkpoint=log.note(12), old_size=10, consistency_proof=[b"short"]
        ).SerializeToString(),
        R.WITNESS_REFUSAL_MALFORMED,
    ),
    "another agency's origin": (
        lambda log, tmp: log.request(10, 12, origin=origin_of(B_ID)).SerializeToString(),
        R.WITNESS_REFUSAL_WRONG_ORIGIN,
    ),
    "signed by another key": (
        lambda log, tmp: peer_pb2.WitnessRequest(
            checkpoint=_other_key_note(log, tmp),
            old_size=10,
            consistency_proof=consistency_proof(log.tree(12), 10, 12),
        ).SerializeToString(),
        R.WITNESS_REFUSAL_BAD_SIGNATURE,
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_bad_request_is_refused_with_its_reason(
    witness: Witnessed,
    tmp_path: Path,
    case: str,
) -> None:
    log, view = witness.log, witness.view
    log.leaves += _leaves("later", 2)
    make, refusal = REFUSALS[case]
    raw = make(log, tmp_path)
    before = view.last_audit_seq()
    answer = witness.ask(raw)
    assert (answer.status, answer.refusal) == (S.WITNESS_STATUS_REFUSED, refusal)
    assert _count(view, PeerCheckpoint) == 1
    assert _count(view, WitnessEvidence) == 0
    refused = [e for e in view.audit_since(before) if e.event == "checkpoint-refused"]
    assert [(e.peer, e.reason) for e in refused] == [
        (A_ID, R.Name(refusal).removeprefix("WITNESS_REFUSAL_"))
    ]


def test_a_revoked_peer_gets_no_cosignature_and_no_proof(witness: Witnessed) -> None:
    witness.peers_changed(
        lambda store, now: store.revoke_peer(A_ID, "left the network", actor="test", now=now)
    )
    witness.log.leaves += _leaves("later", 2)
    before = witness.view.last_audit_seq()
    answer = witness.ask(witness.log.request(10, 12))
    assert (answer.status, answer.refusal) == (S.WITNESS_STATUS_REFUSED, R.WITNESS_REFUSAL_REVOKED)
    assert _count(witness.view, PeerCheckpoint) == 1
    stub = peer_pb2_grpc.PeerExchangeStub(witness.channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ProveInclusion(peer_pb2.InclusionRequest(index=0, tree_size=1), timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    events = [(e.event, e.reason) for e in witness.view.audit_since(before)]
    assert ("checkpoint-refused", "REVOKED") in events
    assert ("access-denied", None) in events


def test_a_peer_pinned_anew_starts_a_new_witness_history(
    witness: Witnessed, tmp_path: Path
) -> None:
    """After `peers add --replace` (the peer was reinstalled: new keys, a fresh log), its
    first checkpoint is not a rollback of the old history; the old rows stay."""
    reinstalled = make_home(tmp_path / "reinstalled", A_ID).identity()
    witness.peers_changed(
        lambda store, now: store.pin_peer(reinstalled.card, actor="test", now=now, replace=True)
    )
    channel = peer_channel(reinstalled, witness.node.card)
    try:
        fresh = Witnessed(
            ForgedLog(reinstalled, _leaves("reinstalled", 3)), channel, witness.view, witness.node
        )
        answer = fresh.ask(fresh.log.request(0, 3))
    finally:
        channel.close()
    assert answer.status == S.WITNESS_STATUS_COSIGNED
    with witness.view.store.read() as session:
        sizes = sorted(row.size for row in session.scalars(select(PeerCheckpoint)))
    assert sizes == [3, 10]


def test_a_cosignature_by_the_card_a_witness_replaced_still_verifies(tmp_path: Path) -> None:
    """While a witness rotates, it signs with the card it knows we pin: the old one."""
    old, new = make_home(tmp_path, B_ID).identity(), make_home(tmp_path / "new", B_ID).identity()
    body = Checkpoint(origin=origin_of(A_ID), size=3, root=bytes(32)).body()
    line = cosign(body, name=witness_name(B_ID), ed25519_key=old.signing_key, timestamp=1)
    assert _verified_cosignature(body, line, B_ID, [new.card, old.card]) == 1
    with pytest.raises(CheckpointError):
        _verified_cosignature(body, line, B_ID, [new.card])


def test_an_unknown_refusal_number_is_named_not_raised() -> None:
    assert _name(R, 99, "WITNESS_REFUSAL_") == "UNKNOWN-99"
    assert _name(R, R.WITNESS_REFUSAL_ROLLBACK, "WITNESS_REFUSAL_") == "ROLLBACK"


def test_our_note_holds_more_cosignatures_than_a_foreign_note_may(tmp_path: Path) -> None:
    """One line per peer: twenty peers' cosignatures must not break checkpointing."""
    home = make_home(tmp_path, A_ID)
    me = home.identity()
    store = Store(home.database_url())
    try:
        checkpoint = Checkpoint(origin=origin_of(A_ID), size=1, root=bytes(32))
        note = sign_checkpoint(checkpoint, name=checkpoint.origin, ed25519_key=me.signing_key)
        now = dt.datetime.now(dt.UTC)
        with store.write() as session:
            session.add(AuditCheckpoint(size=1, root=bytes(32), note=note, signed_at=now))
            for number in range(20):
                peer = f"XX.PEER.N{number:02d}"
                key = ed25519.Ed25519PrivateKey.generate()
                line = cosign(checkpoint, name=witness_name(peer), ed25519_key=key, timestamp=1)
                session.add(
                    CheckpointCosignature(
                        size=1, peer=peer, line=line.line(), timestamp=1, received_at=now
                    )
                )
        with store.read() as session:
            row = session.get_one(AuditCheckpoint, 1)
            every = signed_checkpoint(session, row)
            one = signed_checkpoint(session, row, only="XX.PEER.N07")
        assert len(every.cosigners) == 20
        assert len(parse_note(every.cosigned, limits=COSIGNED_LIMITS).signatures) == 21
        assert one.cosigners == ("XX.PEER.N07",)
        assert len(parse_note(one.cosigned).signatures) == 2
    finally:
        store.close()


def test_a_peer_cannot_fill_the_witness_disk(witness: Witnessed) -> None:
    """The review's flood: the same rollback again and again, each note padded with junk
    signature lines. One piece of evidence is kept, once audited; notes are kept with the
    peer's own signature lines only."""
    junk = [NoteSignature(f"junk-{n}", bytes(4), b"\xff" * 3000).line() for n in range(10)]

    def padded(size: int) -> peer_pb2.WitnessRequest:
        request = witness.log.request(10, size)
        request.checkpoint = request.checkpoint + b"".join(junk)
        return request

    before = witness.view.last_audit_seq()
    for _ in range(5):
        answer = witness.ask(padded(8))
        assert (answer.status, answer.refusal) == (
            S.WITNESS_STATUS_REFUSED,
            R.WITNESS_REFUSAL_ROLLBACK,
        )
    alarms = [e for e in witness.view.audit_since(before) if e.event == "split-view-detected"]
    assert len(alarms) == 1
    with witness.view.store.read() as session:
        kept = session.scalars(select(WitnessEvidence)).one()
    assert len(parse_note(kept.presented_note).signatures) == 1
    assert len(kept.presented_note) < 400
    # A growing log padded the same way is cosigned and kept without the padding.
    witness.log.leaves += _leaves("later", 3)
    request = witness.log.request(10, 13)
    request.checkpoint = request.checkpoint + b"".join(junk)
    assert witness.ask(request).status == S.WITNESS_STATUS_COSIGNED
    assert len(parse_note(_witnessed(witness.view, A_ID).note).signatures) == 1


def test_sizes_past_a_signed_64_bit_integer_are_malformed(witness: Witnessed) -> None:
    """They were INTERNAL errors that lost the alarm (the review's finding)."""
    witness.log.leaves += _leaves("later", 2)
    request = witness.log.request(10, 12)
    request.old_size = 2**63
    answer = witness.ask(request)
    assert (answer.status, answer.refusal) == (
        S.WITNESS_STATUS_REFUSED,
        R.WITNESS_REFUSAL_MALFORMED,
    )
