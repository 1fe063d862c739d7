"""The store's contract: schema from migrations, append-only audit, group commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import itertools
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from liaison.server.committer import GroupCommitter
from liaison.server.store import audit, auditlog, outbox
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import Base, Message
from liaison.server.store.store import (
    MIGRATIONS,
    SCHEMA_HEAD,
    Store,
    StoreError,
    sqlite_url,
)
from tests.notices import stored_record

APPEND_ONLY_TABLES = importlib.import_module(
    "liaison.server.store.migrations.versions.0011_postgresql_append_only"
).APPEND_ONLY_TABLES


@pytest.fixture
def store(database_url: str) -> Store:
    """A migrated store, on SQLite and on PostgreSQL."""
    store = Store(database_url)
    store.migrate()
    return store


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Store:
    store = Store(sqlite_url(tmp_path / "node.db"))
    store.migrate()
    return store


def _event(session: Session, detail: str = "") -> int:
    return audit.append(
        session, AuditKind.NODE_INITIALISED, at=dt.datetime.now(dt.UTC), detail=detail
    ).seq


def test_migrations_produce_exactly_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_the_schema_head_is_the_newest_migration(store: Store) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == SCHEMA_HEAD
    assert store.schema_revision() == SCHEMA_HEAD


def test_migrating_twice_changes_nothing(store: Store) -> None:
    store.migrate()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    assert head >= "0003"
    with store.engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head


def test_sqlite_runs_in_wal_mode_with_full_sync_and_secure_delete(sqlite_store: Store) -> None:
    store = sqlite_store
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        # Freed bytes zeroed: a destroyed message's content does not linger in the file.
        assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_events SET detail = 'x'", "DELETE FROM audit_events"]
)
def test_audit_trail_is_append_only(store: Store, statement: str) -> None:
    with store.write() as session:
        _event(session, "original")
    with pytest.raises(DBAPIError, match="append-only"), store.write() as session:
        session.execute(text(statement))
    events = store.audit_events()
    assert [(e.seq, e.detail) for e in events] == [(1, "original")]


def test_group_commit_folds_concurrent_units_and_keeps_sequence_gap_free(store: Store) -> None:
    async def run() -> tuple[list[int], int]:
        committer = GroupCommitter(store, max_batch=64)
        committer.start()
        seqs = await asyncio.gather(*(committer.submit(_event) for _ in range(200)))
        await committer.stop()
        return list(seqs), committer.batches

    seqs, batches = asyncio.run(run())
    assert sorted(seqs) == list(range(1, 201))
    assert batches < 200  # several units shared a transaction
    assert [e.seq for e in store.audit_events(limit=1000)] == list(range(1, 201))


def test_a_failing_unit_fails_alone(store: Store) -> None:
    def broken(session: Session) -> int:
        _event(session, "rolled back")
        raise ValueError("broken unit")

    async def run() -> list[object]:
        committer = GroupCommitter(store, max_batch=64)
        committer.start()
        results = await asyncio.gather(
            committer.submit(_event),
            committer.submit(broken),
            committer.submit(_event),
            return_exceptions=True,
        )
        await committer.stop()
        return results

    results = asyncio.run(run())
    assert isinstance(results[1], ValueError)
    assert sorted(r for r in results if isinstance(r, int)) == [1, 2]
    assert [e.detail for e in store.audit_events()] == ["", ""]


def test_a_message_is_found_by_its_id_with_one_seek(sqlite_store: Store) -> None:
    store = sqlite_store
    """Lookups by direction and message id (a notice's state and recipients, asked on
    every send) must seek the message-id index. They were planned on an index that
    begins with the direction alone, reading every outbound message each time: the
    cost of a send grew with the outbox (found with `liaison bench`, issue 10)."""
    statements: list[tuple[str, object]] = []

    def capture(*args: object) -> None:
        statements.append((str(args[2]), args[3]))

    event.listen(store.engine, "before_cursor_execute", capture)
    message_id = "019ac9f0-8000-7000-8000-000000000001"
    store.outbound_states(message_id)
    with pytest.raises(StoreError):
        store.state(message_id)
    store.notice_messages(message_id)
    event.remove(store.engine, "before_cursor_execute", capture)
    plans = []
    with store.engine.connect() as connection:
        for statement, parameters in statements:
            if "FROM messages" in statement and statement.lstrip().startswith("SELECT"):
                rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
                plans += [row[-1] for row in rows if "messages" in row[-1]]
    assert len(plans) >= 3
    assert all("ix_messages_message_id (message_id=? AND direction=?)" in p for p in plans), plans


def test_a_retry_in_the_same_group_commit_queues_nothing_twice(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Two calls with one idempotency key whose units share a transaction: the second
    sees what the first remembered, though nothing was written yet (no autoflush)."""
    first, second = (
        "019ac9f0-8000-7000-8000-000000000001",
        "019ac9f0-8000-7000-8000-000000000002",
    )

    def queue(message_id: str) -> Callable[[Session], str]:
        def work(session: Session) -> str:
            queued, _pending = outbox.queue_once(
                session, stored_record(message_id), actor="ops", key="k-1", request_sha256="ab"
            )
            return queued

        return work

    async def run() -> list[str]:
        committer = GroupCommitter(store, max_batch=64)
        committer.start()
        ids = await asyncio.gather(committer.submit(queue(first)), committer.submit(queue(second)))
        batches = committer.batches
        await committer.stop()
        assert batches == 1  # one transaction: the case this is about
        return list(ids)

    assert asyncio.run(run()) == [first, first]
    assert "retrying singly" not in caplog.text  # the shared transaction did not fail
    with store.read() as session:
        queued = session.scalars(select(Message.message_id)).all()
    assert queued == [first]


def test_two_stores_on_one_database_append_one_gap_free_log(database_url: str) -> None:
    """Two replicas of a node (two stores, each its own connections) append at once:
    one log, every sequence number once, no transaction refused."""
    first, second = Store(database_url), Store(database_url)
    first.migrate()
    appends = 40

    def append_all(store: Store, name: str) -> None:
        for number in range(appends):
            with store.write() as session:
                _event(session, f"{name}-{number}")
                _event(session, f"{name}-{number}-b")

    threads = [
        threading.Thread(target=append_all, args=(store, name))
        for store, name in ((first, "one"), (second, "two"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = first.audit_events()
    assert [e.seq for e in events] == list(range(1, 4 * appends + 1))
    assert {e.detail for e in events} == {
        f"{name}-{number}{suffix}"
        for name in ("one", "two")
        for number in range(appends)
        for suffix in ("", "-b")
    }
    # A transaction's two events are adjacent: no other append came between them.
    for event_, following in itertools.pairwise(events):
        if not event_.detail.endswith("-b"):
            assert following.detail == f"{event_.detail}-b"
    with first.read() as session:
        assert auditlog.verify(session).ok


def test_postgresql_refuses_to_truncate_the_audit_log(postgres_url: str) -> None:
    store = Store(postgres_url)
    store.migrate()
    with store.write() as session:
        _event(session, "original")
    for table in APPEND_ONLY_TABLES:
        with pytest.raises(DBAPIError, match="append-only"), store.write() as session:
            session.execute(text(f"TRUNCATE {table} CASCADE"))
    assert [e.detail for e in store.audit_events()] == ["original"]
