"""The audit log verifies, and every kind of tampering with a real database is found and
named: a changed, deleted, inserted or reordered row, in the events, the entries or the
tree. (The newest events cut off the end leave a shorter log that is whole in itself: a
signed checkpoint, which the peer also holds, finds that; see test_audit_tools.py.)"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from liaison.keys.merkle import inclusion_proof, leaf_hash, verify_inclusion
from liaison.server.home import DATABASE_FILE, NodeHome
from liaison.server.store import auditlog
from liaison.server.store.auditlog import StoredTree, verify
from liaison.server.store.store import Store
from tests.cli_homes import run, run_json
from tests.conftest import RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"


@pytest.fixture(scope="module")
def exchanged(tmp_path_factory: pytest.TempPathFactory) -> NodeHome:
    """A home whose log holds an exchange: init, pins, notices sent and delivered."""
    root = tmp_path_factory.mktemp("audit")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        with a.client() as client:
            for number in range(6):
                sent = client.send_notice(B_ID, sample_notice(f"AUD-{number}"), wait_seconds=60)
                assert sent.state == "delivered"
    finally:
        a.stop()
        b.stop()
    return a_home


def _copy(home: NodeHome, tmp_path: Path) -> Path:
    """A backup copy as an operator makes one: through SQLite's backup API, so events still
    in the write-ahead log are in the copy (a plain file copy can miss them)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "copy.db"
    with sqlite3.connect(home.path / DATABASE_FILE) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target


def _size(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def test_the_log_verifies_and_proves_each_event(exchanged: NodeHome) -> None:
    store = Store(exchanged.database_url())
    try:
        with store.read() as session:
            verdict = verify(session)
            tree = StoredTree(session)
            assert verdict.ok, verdict
            assert verdict.size == tree.size() > 20
            assert tree.root() == verdict.root
            entries = [
                row[0]
                for row in session.execute(
                    __import__("sqlalchemy").text("SELECT entry FROM audit_entries ORDER BY seq")
                )
            ]
            for index in (0, 7, verdict.size - 1):
                proof = inclusion_proof(tree, index, verdict.size)
                assert verify_inclusion(
                    leaf_hash(entries[index]), index, verdict.size, proof, verdict.root
                )
    finally:
        store.close()


def _drop_triggers(db: sqlite3.Connection) -> None:
    """What someone with the file does first: the append-only triggers go."""
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f'DROP TRIGGER "{name}"')


TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection, int], None], str, int | None]] = {
    "an event's detail changed": (
        lambda db, n: db.execute("UPDATE audit_events SET detail = 'nothing' WHERE seq = 5"),
        "disagree",
        5,
    ),
    "an event's time changed": (
        lambda db, n: db.execute(
            "UPDATE audit_events SET at = '2020-01-01 00:00:00.000000' WHERE seq = 9"
        ),
        "disagree",
        9,
    ),
    "an entry changed": (
        lambda db, n: db.execute(
            "UPDATE audit_entries SET entry = CAST(entry || x'00' AS BLOB) WHERE seq = 12"
        ),
        "",
        12,
    ),
    "an event in the middle deleted": (
        lambda db, n: (
            db.execute("DELETE FROM audit_events WHERE seq = 7"),
            db.execute("DELETE FROM audit_entries WHERE seq = 7"),
        ),
        "sequence numbers jump",
        8,
    ),
    "an event inserted": (
        lambda db, n: db.execute(
            f"INSERT INTO audit_events (seq, at, event) "
            f"VALUES ({n + 1}, '2026-01-01 00:00:00.000000', 'received')"
        ),
        "without its entry",
        None,
    ),
    "two entries swapped": (
        lambda db, n: (
            db.execute("UPDATE audit_entries SET seq = -1 WHERE seq = 3"),
            db.execute("UPDATE audit_entries SET seq = 3 WHERE seq = 4"),
            db.execute("UPDATE audit_entries SET seq = 4 WHERE seq = -1"),
        ),
        "another position",
        3,
    ),
    "a tree hash changed": (
        lambda db, n: db.execute(
            "UPDATE audit_tree SET hash = zeroblob(32) WHERE level = 1 AND idx = 2"
        ),
        "does not recompute",
        5,
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_found_and_named(
    exchanged: NodeHome, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    change, problem, seq = TAMPERING[case]
    copy = _copy(exchanged, tmp_path)
    assert run(capsys, "audit", "verify", "--database", str(copy))[0] == 0
    size = _size(copy)
    with sqlite3.connect(copy) as db:
        _drop_triggers(db)
        before = db.total_changes
        change(db, size)
        assert db.total_changes > before, "the tampering changed nothing"
    code, out, err = run(capsys, "audit", "verify", "--database", str(copy))
    assert code == 7, (out, err)
    assert err.count("\n") == 1
    assert problem in err
    if seq is not None:
        assert f"at event {seq}:" in err
    code, out, _ = run(capsys, "audit", "verify", "--database", str(copy), "--json")
    assert code == 7
    assert json.loads(out)["verified"] is False


def test_the_triggers_refuse_changes(exchanged: NodeHome, tmp_path: Path) -> None:
    copy = _copy(exchanged, tmp_path)
    with sqlite3.connect(copy) as db:
        for statement in (
            "UPDATE audit_entries SET entry = x'00' WHERE seq = 1",
            "DELETE FROM audit_tree WHERE level = 1 AND idx = 0",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)


def test_verify_a_home(exchanged: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    verdict = run_json(capsys, "audit", "verify", "--home", str(exchanged.path))
    assert isinstance(verdict, dict)
    assert verdict["verified"] is True
    assert verdict["problem"] is None


@pytest.mark.parametrize("case", ["an entry changed", "an event in the middle deleted"])
def test_a_large_log_is_checked_by_two_processes_with_the_same_verdict(
    exchanged: NodeHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    """From PARALLEL_FROM events on, two worker processes check a range each: they must
    find and name exactly what one process finds."""
    copy = _copy(exchanged, tmp_path)
    change, problem, seq = TAMPERING[case]
    with sqlite3.connect(copy) as db:
        _drop_triggers(db)
        change(db, _size(copy))
    sequential = run(capsys, "audit", "verify", "--database", str(copy))
    monkeypatch.setattr(auditlog, "PARALLEL_FROM", 4)
    parallel = run(capsys, "audit", "verify", "--database", str(copy))
    assert parallel == sequential
    assert parallel[0] == 7
    assert problem in parallel[2]
    assert f"at event {seq}:" in parallel[2]
    good = _copy(exchanged, tmp_path / "again")
    assert run(capsys, "audit", "verify", "--database", str(good))[0] == 0


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        (
            "INSERT INTO audit_events (seq, at, event, peer, detail) "
            "VALUES (0, '2026-01-01 00:00:00.000000', 'delivered', 'DE.BPOL.LO-RABAT', 'FORGED')",
            "an event before the first",
        ),
        (
            "UPDATE audit_events SET envelope_sha256 = 'not hex' WHERE envelope_sha256 IS NOT NULL",
            "malformed",
        ),
        (
            "UPDATE audit_events SET envelope_sha256 = upper(envelope_sha256) "
            "WHERE envelope_sha256 IS NOT NULL",
            "not lower-case hex",
        ),
        ("UPDATE audit_events SET at = 'yesterday' WHERE seq = 3", "malformed"),
    ],
)
def test_forged_rows_outside_the_entries_are_found(
    exchanged: NodeHome,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    statement: str,
    problem: str,
) -> None:
    """Rows the tree does not cover, or that do not read, are a verdict (exit 7), never a
    traceback and never a pass (the review found seq 0 passed and a bad digest crashed)."""
    copy = _copy(exchanged, tmp_path)
    with sqlite3.connect(copy) as db:
        _drop_triggers(db)
        before = db.total_changes
        db.execute(statement)
        assert db.total_changes > before
    code, out, err = run(capsys, "audit", "verify", "--database", str(copy))
    assert code == 7, (out, err)
    assert problem in err
