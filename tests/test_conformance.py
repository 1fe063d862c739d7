"""Where an independent implementation of docs/PROTOCOL.md found the reference node
disagreeing with the spec (issue 6, protocol conformance): Timestamps compared
exactly, requests that do not parse, unknown ``SealedEnvelope`` fields, and
storage failures. Each case goes through a real node over real mutual TLS, with
the node's clock fixed where a case sits on a boundary."""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from liaison.keys.ids import new_message_id
from liaison.keys.labels import RECEIPT_SIGNATURE_LABEL, signing_input
from liaison.server.home import NodeHome
from liaison.server.interceptors import STORAGE_UNAVAILABLE
from liaison.server.store import inbox
from liaison.server.store import store as store_module
from liaison.server.store.models import Direction
from liaison.v1 import envelope_pb2, peer_pb2
from tests.conftest import (
    Inspector,
    PeerLink,
    RunningNode,
    deliver_checked,
    deliver_raw,
    make_home,
    peer_channel,
    peer_link,
    pin_each_other,
)
from tests.forge import Forge, assemble
from tests.notices import complete, sample_notice

R = envelope_pb2.RejectReason
Reason: TypeAlias = envelope_pb2.RejectReason.ValueType
DELIVER = "/liaison.v1.PeerExchange/Deliver"
NANOS = 1_000_000_000
DAY = 86_400
MAX_LIFETIME_SECONDS = 30 * DAY  # limits.max_lifetime_days by default
SKEW_SECONDS = 300  # limits.clock_skew_seconds by default
# The node's clock in the boundary cases: a moment with microseconds, as a real clock reads.
NOW = dt.datetime(2026, 11, 28, 12, 0, 0, 123_456, tzinfo=dt.UTC)
NOW_SECONDS = int(NOW.replace(microsecond=0).timestamp())
NOW_NANOS = NOW.microsecond * 1_000


@dataclass
class World(PeerLink):
    def forge(self, **changes: object) -> Forge:
        forge = Forge(
            sender=self.a,
            recipient=self.b.card,
            notice=complete(sample_notice(), self.a.agency_id),
            now=NOW,
            message_id=new_message_id(),
        )
        return forge.but(**changes)

    @contextmanager
    def clock(self, moment: dt.datetime = NOW) -> Iterator[None]:
        """The receiving node reads ``moment`` as its clock meanwhile."""
        assert self.b.node is not None
        receiver = self.b.node.receiver
        real = receiver.clock
        receiver.clock = lambda: moment
        try:
            yield
        finally:
            receiver.clock = real


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("conformance")
    with peer_link(root, "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT") as link:
        yield World(**vars(link))


def times(
    created: tuple[int, int], expires: tuple[int, int]
) -> Callable[[envelope_pb2.EnvelopeHeader], None]:
    """Sets the header's times to exact (seconds, nanos), before anything is signed."""

    def change(header: envelope_pb2.EnvelopeHeader) -> None:
        header.created_at.seconds, header.created_at.nanos = created
        header.expires_at.seconds, header.expires_at.nanos = expires

    return change


def after(start: tuple[int, int], nanos: int) -> tuple[int, int]:
    """``start`` plus ``nanos`` nanoseconds, as (seconds, nanos)."""
    seconds, rest = divmod(start[0] * NANOS + start[1] + nanos, NANOS)
    return seconds, rest


CREATED = (NOW_SECONDS, 0)  # what the reference sender writes: whole seconds


def lifetime(nanos: int) -> Callable[[envelope_pb2.EnvelopeHeader], None]:
    return times(CREATED, after(CREATED, nanos))


def assert_accepted(world: World, envelope: bytes) -> None:
    stored = world.inspector.count_messages(Direction.INBOUND)
    receipt = deliver_checked(world.channel, envelope, world.b.card)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED, R.Name(receipt.reason)
    assert receipt.envelope_sha256 == hashlib.sha256(envelope).digest()
    assert world.inspector.count_messages(Direction.INBOUND) == stored + 1


def assert_rejected(
    world: World,
    received: bytes,
    reason: Reason,
    *,
    send: Callable[[bytes], envelope_pb2.Receipt] | None = None,
) -> envelope_pb2.Receipt:
    """``received`` (as the node reads them) are refused with ``reason``: the receipt
    names it, one ``rejected`` audit event names it, nothing is stored."""
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()
    if send is None:
        receipt = deliver_checked(world.channel, received, world.b.card)
    else:
        receipt = send(received)
    name = R.Name(reason)
    assert (receipt.status, R.Name(receipt.reason)) == (envelope_pb2.RECEIPT_STATUS_REJECTED, name)
    assert receipt.envelope_sha256 == hashlib.sha256(received).digest()
    assert world.inspector.count_messages() == stored
    events = world.inspector.audit_since(seq)
    assert [(e.event, e.reason) for e in events] == [
        ("rejected", name.removeprefix("REJECT_REASON_"))
    ]
    assert events[0].envelope_sha256 == hashlib.sha256(received).hexdigest()
    assert events[0].peer == world.a.agency_id
    return receipt


# 1. Timestamps are compared exactly ----------------------------------------------------

LIFETIMES = {
    "30-days": (MAX_LIFETIME_SECONDS * NANOS, None),
    "30-days-and-1-ns": (MAX_LIFETIME_SECONDS * NANOS + 1, R.REJECT_REASON_MALFORMED_ENVELOPE),
    "1-ns": (1, None),
    "500-ns": (500, None),
    "0": (0, R.REJECT_REASON_MALFORMED_ENVELOPE),
    "minus-1-ns": (-1, R.REJECT_REASON_MALFORMED_ENVELOPE),
}


@pytest.mark.parametrize(("nanos", "reason"), LIFETIMES.values(), ids=LIFETIMES.keys())
def test_the_lifetime_is_compared_to_the_nanosecond(
    world: World, nanos: int, reason: Reason | None
) -> None:
    envelope = world.forge(mutate_header=lifetime(nanos)).build()
    with world.clock(NOW.replace(microsecond=0)):  # the instant it was created
        if reason is None:
            assert_accepted(world, envelope)
        else:
            assert_rejected(world, envelope, reason)


NOW_STAMP = (NOW_SECONDS, NOW_NANOS)
SKEW_LATER = after(NOW_STAMP, SKEW_SECONDS * NANOS)
# Each case: the header's times around the node's clock NOW, and the reason (None: accepted).
CLOCK_CASES = {
    "expires-at-now": (times(CREATED, NOW_STAMP), R.REJECT_REASON_EXPIRED),
    "expires-1-ns-after-now": (times(CREATED, after(NOW_STAMP, 1)), None),
    "expired-1-ns-before-now": (times(CREATED, after(NOW_STAMP, -1)), R.REJECT_REASON_EXPIRED),
    "created-at-the-skew": (times(SKEW_LATER, after(SKEW_LATER, NANOS)), None),
    "created-1-ns-past-the-skew": (
        times(after(SKEW_LATER, 1), after(SKEW_LATER, NANOS)),
        R.REJECT_REASON_NOT_YET_VALID,
    ),
}


@pytest.mark.parametrize(("change", "reason"), CLOCK_CASES.values(), ids=CLOCK_CASES.keys())
def test_expiry_and_clock_skew_are_compared_to_the_nanosecond(
    world: World, change: Callable[[envelope_pb2.EnvelopeHeader], None], reason: Reason | None
) -> None:
    envelope = world.forge(mutate_header=change).build()
    with world.clock():
        if reason is None:
            assert_accepted(world, envelope)
        else:
            assert_rejected(world, envelope, reason)


# 2. Every header time is a valid Timestamp before it is used -------------------------

INVALID_TIMES = {
    "created-nanos-negative": times((NOW_SECONDS, -1), after(CREATED, NANOS)),
    "created-nanos-a-second": times((NOW_SECONDS, NANOS), after(CREATED, 2 * NANOS)),
    "expires-after-year-9999": times(CREATED, (253_402_300_800, 0)),
    "created-before-year-1": times((-62_135_596_801, 0), CREATED),
}


@pytest.mark.parametrize("change", INVALID_TIMES.values(), ids=INVALID_TIMES.keys())
def test_an_invalid_header_time_is_malformed(
    world: World, change: Callable[[envelope_pb2.EnvelopeHeader], None]
) -> None:
    envelope = world.forge(mutate_header=change).build()
    with world.clock():
        assert_rejected(world, envelope, R.REJECT_REASON_MALFORMED_ENVELOPE)


# 3. A request that does not parse; storage that fails ------------------------------


def deliver_bytes(world: World) -> Callable[[bytes], envelope_pb2.Receipt]:
    """Sends raw request bytes to Deliver; the receipt, its signature checked."""
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    call = world.channel.unary_unary(DELIVER, **raw)

    def send(request: bytes) -> envelope_pb2.Receipt:
        response = peer_pb2.DeliverResponse.FromString(call(request, timeout=30))
        signed = envelope_pb2.SignedReceipt.FromString(response.receipt)
        world.b.card.signing_key.verify(
            signed.signature, signing_input(RECEIPT_SIGNATURE_LABEL, signed.receipt)
        )
        return envelope_pb2.Receipt.FromString(signed.receipt)

    return send


NOT_A_DELIVER_REQUEST = {
    "truncated": b"\x0a\x05ab",  # field 1 claims five bytes, two follow
    "bad-wire-type": b"\x0f",  # wire type 7 does not exist
    "envelope-then-garbage": peer_pb2.DeliverRequest(envelope=b"x").SerializeToString() + b"\xff",
}


@pytest.mark.parametrize("request_bytes", NOT_A_DELIVER_REQUEST.values(), ids=NOT_A_DELIVER_REQUEST)
def test_a_request_that_does_not_parse_is_a_malformed_envelope(
    world: World, request_bytes: bytes
) -> None:
    receipt = assert_rejected(
        world, request_bytes, R.REJECT_REASON_MALFORMED_ENVELOPE, send=deliver_bytes(world)
    )
    assert (receipt.message_id, receipt.sender) == ("", world.a.agency_id)
    assert receipt.receiver == world.b.card.agency_id


def test_unknown_fields_of_a_deliver_request_are_ignored(world: World) -> None:
    """Nothing of a DeliverRequest but its envelope is read, kept or covered."""
    envelope = world.forge(now=dt.datetime.now(dt.UTC)).build()
    request = peer_pb2.DeliverRequest(envelope=envelope).SerializeToString() + b"\x10\x01"
    stored = world.inspector.count_messages(Direction.INBOUND)
    receipt = deliver_bytes(world)(request)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
    assert receipt.envelope_sha256 == hashlib.sha256(envelope).digest()
    assert world.inspector.count_messages(Direction.INBOUND) == stored + 1


def _database_path(home: NodeHome) -> str:
    path = make_url(home.database_url()).database
    assert path is not None
    return path


@pytest.fixture
def locked_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A world of its own whose store gives up on a held lock after 200 ms."""
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    a_home = make_home(tmp_path, "MA.DGSN.CCPI")
    b_home = make_home(tmp_path, "DE.BPOL.LO-RABAT")
    pin_each_other(a_home, b_home)
    b = RunningNode(b_home).start()
    a = a_home.identity()
    channel = peer_channel(a, b.card)
    inspector = Inspector(b_home)
    try:
        yield World(a=a, b=b, channel=channel, inspector=inspector)
    finally:
        channel.close()
        inspector.close()
        b.stop()


def test_a_locked_database_is_unavailable_and_the_same_bytes_are_accepted_later(
    locked_world: World,
) -> None:
    world = locked_world
    envelope = world.forge(now=dt.datetime.now(dt.UTC)).build()
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()
    holder = sqlite3.connect(_database_path(world.b.home), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(grpc.RpcError) as refused:
            deliver_raw(world.channel, envelope)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == STORAGE_UNAVAILABLE
    assert world.inspector.count_messages() == stored
    assert world.inspector.audit_since(seq) == []
    assert_accepted(world, envelope)


def test_a_failed_replay_lookup_is_unavailable_not_a_rejection(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the store for the replay check fails: the envelope is not judged."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise OperationalError("SELECT", {}, Exception("disk I/O error"))

    envelope = world.forge(now=dt.datetime.now(dt.UTC)).build()
    seq = world.inspector.last_audit_seq()
    stored = world.inspector.count_messages()
    monkeypatch.setattr(inbox, "stored_receipt", broken)
    with pytest.raises(grpc.RpcError) as refused:
        deliver_raw(world.channel, envelope)
    monkeypatch.undo()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert world.inspector.count_messages() == stored
    assert world.inspector.audit_since(seq) == []
    assert_accepted(world, envelope)


# 4. Fields of a SealedEnvelope that no signature covers --------------------------------

UNKNOWN_FIELDS: dict[str, Callable[[bytes, bytes, bytes], bytes]] = {
    "field-4-varint-after": lambda h, c, s: assemble(h, c, s) + b"\x20\x01",
    "field-15-bytes-before": lambda h, c, s: b"\x7a\x03abc" + assemble(h, c, s),
    "field-3-as-varint": lambda h, c, s: assemble(h, c, s) + b"\x18\x01",
    "empty-field-99": lambda h, c, s: assemble(h, c, s) + b"\x9a\x06\x00",
}


@pytest.mark.parametrize("build", UNKNOWN_FIELDS.values(), ids=UNKNOWN_FIELDS.keys())
def test_a_sealed_envelope_with_an_unknown_field_is_malformed(
    world: World, build: Callable[[bytes, bytes, bytes], bytes]
) -> None:
    envelope = build(*world.forge(now=dt.datetime.now(dt.UTC)).parts())
    receipt = assert_rejected(world, envelope, R.REJECT_REASON_MALFORMED_ENVELOPE)
    assert (receipt.message_id, receipt.sender) == ("", world.a.agency_id)


def test_unknown_header_fields_are_signed_and_accepted(world: World) -> None:
    """The header's bytes are covered by both signatures and the HPKE info, unknown
    fields included: they are not refused."""

    def extend(header: envelope_pb2.EnvelopeHeader) -> None:
        header.MergeFromString(b"\xa0\x06\x01")  # field 100, varint 1

    forge = world.forge(now=dt.datetime.now(dt.UTC), mutate_header=extend)
    assert_accepted(world, forge.build())
