"""Notices sealed at rest (issue 6, content at rest): a data key per message wrapped
by the node's storage key; nothing of a notice in clear in any database file or
log; a tampered row refused; a destroyed data key leaves digests, receipt and
audit trail; older homes and rows brought in at serve."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from liaison.client.errors import ClientError
from liaison.keys.content_types import CASE_NOTICE_CONTENT_TYPE
from liaison.keys.keystore import NewKey, NodeKeys
from liaison.keys.storage import (
    STORAGE_ROLE,
    Row,
    StorageKey,
    StoredContentError,
    Summary,
    open_content_at_rest,
    open_summary,
    seal_content_at_rest,
)
from liaison.server.home import DATABASE_FILE, NodeHome
from liaison.server.store.models import Direction
from liaison.server.store.store import (
    SCHEMA_HEAD,
    DestroyOutcome,
    SchemaMismatch,
    Store,
)
from liaison.v1 import envelope_pb2, node_pb2
from liaison.v1 import notice_pb2 as N
from tests.cli_homes import run
from tests.conftest import (
    TEST_KDF_LOG2_N,
    Inspector,
    RunningNode,
    make_home,
    migrate_to,
    pin_each_other,
)
from tests.notices import sample_notice

WAIT = 30
MARKER = "ZQX-MARKER-4417-ZQX"
A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"


def marked_notice(number: int = 0) -> N.CaseNotice:
    """A notice with the marker in its body, subject, case reference, a subject's
    name, and an attachment's name and content."""
    notice = sample_notice(f"{MARKER}-{number}", attachment=f"scan {MARKER} scan".encode() * 50)
    notice.subject = f"Subject {MARKER}"
    notice.body = f"Body {MARKER} body"
    notice.subjects[0].name = f"PERSON {MARKER}"
    notice.attachments[0].name = f"{MARKER}.bin"
    return notice


def database_files(home: NodeHome) -> dict[str, bytes]:
    """The raw bytes of node.db, node.db-wal and node.db-shm (those that exist)."""
    found = {}
    for suffix in ("", "-wal", "-shm"):
        path = home.path / (DATABASE_FILE + suffix)
        if path.exists():
            found[path.name] = path.read_bytes()
    return found


def found_in(files: dict[str, bytes], *needles: bytes) -> list[str]:
    return [name for name, data in files.items() for needle in needles if needle in data]


def checkpoint(home: NodeHome) -> None:
    store = Store(home.database_url())
    try:
        store.checkpoint()
    finally:
        store.close()


@contextlib.contextmanager
def database(home: NodeHome) -> Iterator[Connection]:
    """A transaction on the node's database, whichever kind it is, behind its back."""
    engine = create_engine(home.database_url())
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


# A message's row and its body (revision 0013: envelope and content in a row of their own).
WHOLE_ROWS = (
    "SELECT messages.*, message_bodies.envelope, message_bodies.content FROM messages "
    "JOIN message_bodies ON message_bodies.message_pk = messages.id"
)
BODY_COLUMNS = {"envelope", "content"}


def row(home: NodeHome, message_id: str, direction: Direction) -> dict[str, object]:
    with database(home) as db:
        found = db.execute(
            text(f"{WHOLE_ROWS} WHERE message_id = :id AND direction = :direction"),
            {"id": message_id, "direction": direction.value},
        ).first()
    assert found is not None
    return dict(found._mapping)


def all_rows(home: NodeHome) -> list[tuple[object, ...]]:
    with database(home) as db:
        return [tuple(r) for r in db.execute(text(f"{WHOLE_ROWS} ORDER BY messages.id"))]


def change(db: Connection, pk: object, **values: object) -> None:
    """Set columns of message ``pk``, in ``messages`` or in its body."""
    for table, key, names in (
        ("messages", "id", values.keys() - BODY_COLUMNS),
        ("message_bodies", "message_pk", values.keys() & BODY_COLUMNS),
    ):
        if names:
            assignments = ", ".join(f"{name} = :{name}" for name in sorted(names))
            db.execute(
                text(f"UPDATE {table} SET {assignments} WHERE {key} = :pk"),
                {"pk": pk, **{name: values[name] for name in names}},
            )


# The sealing itself ----------------------------------------------------------------


ROW = Row("inbound", A_ID, "0190c1a0-0000-7000-8000-000000000001")


def test_content_and_summary_round_trip_and_every_binding_is_checked() -> None:
    key = StorageKey.generate()
    sealed = seal_content_at_rest(key, b"notice bytes", Summary("subject", "CASE-1"), ROW)
    assert b"notice bytes" not in sealed.content
    opened = open_content_at_rest(
        key, content=sealed.content, data_key=sealed.data_key, storage_key_id=key.key_id, row=ROW
    )
    assert opened == b"notice bytes"
    assert open_summary(key, summary=sealed.summary, storage_key_id=key.key_id, row=ROW) == Summary(
        "subject", "CASE-1"
    )
    other_rows = [
        Row("outbound", A_ID, ROW.message_id),
        Row("inbound", B_ID, ROW.message_id),
        Row("inbound", A_ID, "0190c1a0-0000-7000-8000-000000000002"),
    ]
    for other in other_rows:
        with pytest.raises(StoredContentError, match="data key does not open"):
            open_content_at_rest(
                key,
                content=sealed.content,
                data_key=sealed.data_key,
                storage_key_id=key.key_id,
                row=other,
            )
        with pytest.raises(StoredContentError, match="summary does not open"):
            open_summary(key, summary=sealed.summary, storage_key_id=key.key_id, row=other)
    with pytest.raises(StoredContentError, match="sealed under storage key"):
        open_content_at_rest(
            StorageKey.generate(),
            content=sealed.content,
            data_key=sealed.data_key,
            storage_key_id=key.key_id,
            row=ROW,
        )
    # Another key under this key's id: the wrapped data key does not open.
    impostor = StorageKey(StorageKey.generate().secret(), key.key_id)
    with pytest.raises(StoredContentError, match="data key does not open"):
        open_content_at_rest(
            impostor,
            content=sealed.content,
            data_key=sealed.data_key,
            storage_key_id=key.key_id,
            row=ROW,
        )
    assert key.secret().hex() not in repr(key)
    two = seal_content_at_rest(key, b"notice bytes", Summary("subject", "CASE-1"), ROW)
    assert two.content != sealed.content
    assert two.data_key != sealed.data_key


# End to end -------------------------------------------------------------------------


def test_a_marker_is_in_no_database_file_and_no_log_and_both_sides_read_the_notice(
    pair: tuple[RunningNode, RunningNode], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    a, b = pair
    notice = marked_notice()
    with a.client() as client_a, b.client() as client_b:
        sent = client_a.send_notice(B_ID, notice, wait_seconds=WAIT)
        assert sent.state == "delivered"
        reply = client_b.send_notice(A_ID, marked_notice(1), wait_seconds=WAIT)
        assert reply.state == "delivered"
        marker = MARKER.encode()
        for home in (a.home, b.home):
            assert found_in(database_files(home), marker) == [], home.path.name
        for home in (a.home, b.home):
            checkpoint(home)
            assert found_in(database_files(home), marker) == [], home.path.name

        received = client_b.get_message(sent.message_id)
        outbound = client_a.get_message(sent.message_id)
        for detail in (received, outbound):
            assert detail.notice.body == f"Body {MARKER} body"
            assert detail.notice.subjects[0].name == f"PERSON {MARKER}"
            assert detail.notice.attachments[0].content == notice.attachments[0].content
            assert detail.summary.subject == f"Subject {MARKER}"
            assert detail.summary.case_reference == f"{MARKER}-0"
        assert received.notice == outbound.notice
        for client, direction in (
            (client_b, node_pb2.DIRECTION_INBOUND),
            (client_a, node_pb2.DIRECTION_OUTBOUND),
        ):
            listed = client.list_messages(direction)
            assert [(m.subject, m.case_reference) for m in listed] == [
                (f"Subject {MARKER}", f"{MARKER}-0")
            ]
    logged = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert logged
    assert [line for line in logged if MARKER in line] == []


@pytest.mark.parametrize(
    "alteration", ["content", "data_key", "storage_key_id", "swapped-rows", "summary"]
)
def test_an_altered_row_does_not_open_and_nothing_changes(
    pair: tuple[RunningNode, RunningNode], alteration: str
) -> None:
    a, b = pair
    with a.client() as client_a:
        first = client_a.send_notice(B_ID, marked_notice(1), wait_seconds=WAIT)
        second = client_a.send_notice(B_ID, marked_notice(2), wait_seconds=WAIT)
        assert first.state == second.state == "delivered"
    one = row(b.home, first.message_id, Direction.INBOUND)
    two = row(b.home, second.message_id, Direction.INBOUND)
    with database(b.home) as db:
        if alteration == "swapped-rows":
            # Both rows' sealed content, data key and summary exchanged: each is bound to
            # its own message id, so neither opens in the other's row.
            for mine, theirs in ((one, two), (two, one)):
                change(
                    db,
                    mine["id"],
                    content=theirs["content"],
                    data_key=theirs["data_key"],
                    summary=theirs["summary"],
                )
        elif alteration == "storage_key_id":
            change(db, one["id"], storage_key_id="0" * 32)
        else:
            value = bytearray(one[alteration])  # type: ignore[arg-type]
            value[20] ^= 1
            change(db, one["id"], **{alteration: bytes(value)})
    before = all_rows(b.home)
    with Inspector(b.home) as inspector:
        seq = inspector.last_audit_seq()
        with b.client() as client_b:
            if alteration == "summary":
                listed = client_b.list_messages(node_pb2.DIRECTION_INBOUND)
                subjects = {m.message_id: m.subject for m in listed}
                assert "summary unreadable" in subjects[first.message_id]
                assert subjects[second.message_id] == f"Subject {MARKER}"
            else:
                with pytest.raises(ClientError, match="does not open") as refused:
                    client_b.get_message(first.message_id)
                assert "restore it from a backup" in str(refused.value)
                assert MARKER not in str(refused.value)
        assert inspector.last_audit_seq() == seq
    assert all_rows(b.home) == before
    if alteration == "summary":  # the notice itself still opens (and is then read)
        with b.client() as client_b:
            assert client_b.get_message(first.message_id).notice.body == f"Body {MARKER} body"


def test_a_destroyed_data_key_leaves_digests_receipt_and_audit_but_no_content(
    pair: tuple[RunningNode, RunningNode],
) -> None:
    a, b = pair
    with a.client() as client_a:
        sent = client_a.send_notice(B_ID, marked_notice(), wait_seconds=WAIT)
        assert sent.state == "delivered"
        kept = client_a.send_notice(B_ID, marked_notice(1), wait_seconds=WAIT)
    with b.client() as client_b:
        before = client_b.get_message(sent.message_id)
    stored = row(b.home, sent.message_id, Direction.INBOUND)
    blobs = [
        bytes(stored[column])[-64:]  # type: ignore[arg-type]
        for column in ("content", "data_key", "summary", "envelope")
    ]
    # The bytes themselves are looked for in SQLite's files. PostgreSQL keeps a changed
    # row's old version until VACUUM reclaims it (README, "Running in production").
    in_files = b.home.database_url().startswith("sqlite")
    if in_files:
        checkpoint(b.home)
        assert len(found_in(database_files(b.home), *blobs)) == len(blobs)  # the search works

    store = Store(b.home.database_url())
    try:
        outcome = store.destroy_content(
            sent.message_id, Direction.INBOUND, actor="test", now=dt.datetime.now(dt.UTC)
        )
        again = store.destroy_content(
            sent.message_id, Direction.INBOUND, actor="test", now=dt.datetime.now(dt.UTC)
        )
    finally:
        store.close()
    assert (outcome, again) == (DestroyOutcome.DESTROYED, DestroyOutcome.ALREADY)

    if in_files:
        assert found_in(database_files(b.home), *blobs) == []
    destroyed = row(b.home, sent.message_id, Direction.INBOUND)
    assert destroyed["content_format"] == "destroyed"
    assert [destroyed[c] for c in ("data_key", "summary", "content", "envelope")] == [
        None,
        None,
        b"",
        b"",
    ]
    assert destroyed["envelope_sha256"] == stored["envelope_sha256"]
    with b.client() as client_b:
        after = client_b.get_message(sent.message_id)
        assert not after.HasField("notice")
        assert after.envelope_sha256 == before.envelope_sha256
        assert after.receipt == before.receipt
        assert after.receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        assert after.summary.subject == after.summary.case_reference == ""
        events = [e.event for e in after.timeline]
        # Opened (read) before it was destroyed.
        assert events == ["received", "receipt-issued", "read", "content-destroyed"]
        assert MARKER not in str(after)
        # The other notice is untouched.
        assert client_b.get_message(kept.message_id).notice.body == f"Body {MARKER} body"
    with Inspector(b.home) as inspector:
        # The last of its kind (B's read notification is meanwhile on its way too).
        event = [e for e in inspector.audit_since(0) if e.event == "content-destroyed"][-1]
    assert (event.event, event.actor, event.envelope_sha256) == (
        "content-destroyed",
        "test",
        stored["envelope_sha256"],
    )


def test_an_outbound_notice_still_to_deliver_is_not_destroyed(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a = node_factory(homes[0])  # its peer is not running: the notice stays queued
    with a.client() as client:
        sent = client.send_notice(B_ID, marked_notice())
    sealed = ("content", "data_key", "summary", "envelope", "content_format")
    before = [row(a.home, sent.message_id, Direction.OUTBOUND)[c] for c in sealed]
    store = Store(a.home.database_url())
    try:
        now = dt.datetime.now(dt.UTC)
        outcomes = [
            store.destroy_content(sent.message_id, Direction.OUTBOUND, actor="test", now=now),
            store.destroy_content(sent.message_id, Direction.INBOUND, actor="test", now=now),
        ]
    finally:
        store.close()
    assert outcomes == [DestroyOutcome.PENDING, DestroyOutcome.NOT_FOUND]
    assert [row(a.home, sent.message_id, Direction.OUTBOUND)[c] for c in sealed] == before


# Homes and rows of earlier versions ------------------------------------------------------


def _drop_storage_key(home: NodeHome) -> None:
    """Rewrite the key store as it was before storage keys: the same keys, none ``storage``."""
    opened = home.open_keys()
    keys = home.keys
    current = keys.current()
    entries = [entry for entry in keys.entries() if entry.role != STORAGE_ROLE]
    new = [NewKey(entry, opened.private(entry.role)) for entry in entries]
    public = {"tls.crt": (current / "tls.crt").read_bytes()}
    assert home.unlocker is not None
    folder = keys.folder
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            path.rmdir()
    NodeKeys(folder).create(new, public, home.unlocker, log2_n=TEST_KDF_LOG2_N)


def test_an_older_home_without_a_storage_key_gets_one_at_serve(
    tmp_path: Path, node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    card = a_home.identity().card
    _drop_storage_key(a_home)
    assert STORAGE_ROLE not in {entry.role for entry in a_home.keys.entries()}
    generation, params = a_home.keys.current().name, a_home.keys.params()

    a = node_factory(a_home)
    node_factory(b_home)
    entries = {entry.role: entry for entry in a_home.keys.entries()}
    assert STORAGE_ROLE in entries
    assert entries[STORAGE_ROLE].kind.startswith("AES-256-GCM storage key")
    assert a_home.keys.current().name > generation
    assert a_home.keys.params() == params  # the same passphrase derivation
    assert a_home.identity().card.signed_card == card.signed_card
    with Inspector(a_home) as inspector:
        events = [(e.event, e.detail) for e in inspector.audit_since(0)]
    assert ("key-created", f"storage key {entries[STORAGE_ROLE].key_id}") in events
    with a.client() as client:
        sent = client.send_notice(B_ID, marked_notice(), wait_seconds=WAIT)
        assert sent.state == "delivered"
        assert client.get_message(sent.message_id).notice.body == f"Body {MARKER} body"
    assert found_in(database_files(a_home), MARKER.encode()) == []


def test_notices_stored_in_clear_by_an_earlier_version_are_sealed_at_start(
    tmp_path: Path,
    node_factory: Callable[[NodeHome], RunningNode],
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = make_home(tmp_path, B_ID)
    database = home.path / DATABASE_FILE
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.touch(mode=0o600)
    store = Store(home.database_url())
    migrate_to(store, "0002")
    store.close()
    notices = [marked_notice(number) for number in range(3)]
    ids = [f"0190c1a0-0000-7000-8000-00000000000{number}" for number in range(3)]
    now = dt.datetime.now(dt.UTC).isoformat()
    with sqlite3.connect(database) as db:
        for number, (message_id, notice) in enumerate(zip(ids, notices, strict=True)):
            envelope = hashlib.sha256(message_id.encode()).digest() * 4
            db.execute(
                "INSERT INTO messages (message_id, direction, sender, recipient, state, "
                "content_type, category, priority, handling, case_reference, subject, "
                "envelope, envelope_sha256, content, created_at, expires_at, updated_at, "
                "attempts) VALUES (?, 'inbound', ?, ?, 'received', ?, 1, 1, 1, ?, ?, ?, ?, "
                "?, ?, ?, ?, 0)",
                (
                    message_id,
                    A_ID,
                    B_ID,
                    CASE_NOTICE_CONTENT_TYPE,
                    notice.case_reference,
                    notice.subject,
                    envelope,
                    hashlib.sha256(envelope).hexdigest(),
                    notice.SerializeToString(),
                    now,
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO receipts (message_pk, signed_receipt, status, received_at) "
                "VALUES (?, x'', 'accepted', ?)",
                (number + 1, now),
            )
    assert found_in(database_files(home), MARKER.encode())

    # A node refuses a schema that is behind, and says what to run; nothing changes.
    with pytest.raises(SchemaMismatch, match=r"at revision 0002.*liaison db upgrade"):
        node_factory(home)
    assert Store(home.database_url()).schema_revision() == "0002"
    code, out, err = run(capsys, "db", "upgrade", "--home", str(home.path))
    assert (code, err) == (0, "")
    assert f"from revision 0002 to {SCHEMA_HEAD}" in out

    node = node_factory(home)
    assert node.node is not None
    assert node.node.sealing is not None
    assert node.run(node.node.sealing) == 3
    checkpoint(home)
    assert found_in(database_files(home), MARKER.encode()) == []
    with node.client() as client:
        for message_id, notice in zip(ids, notices, strict=True):
            detail = client.get_message(message_id)
            assert detail.notice == notice
            assert detail.HasField("receipt")
        listed = client.list_messages(node_pb2.DIRECTION_INBOUND)
        assert sorted(m.subject for m in listed) == [f"Subject {MARKER}"] * 3
    with Inspector(home) as inspector:
        assert "content-sealed" in [e.event for e in inspector.audit_since(0)]
