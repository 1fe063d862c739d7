"""A node never changes its database's schema by itself: it refuses to start on a schema
that is behind (naming `liaison db upgrade`) or ahead (written by a newer version), and
`liaison db upgrade` brings it to this version's, on SQLite and on PostgreSQL (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from liaison.server.home import NodeHome
from liaison.server.store.store import SCHEMA_HEAD, SchemaMismatch, Store
from tests.cli_homes import run
from tests.conftest import RunningNode, make_home, migrate_to


@pytest.fixture
def home(tmp_path: Path, database_url: str) -> NodeHome:
    return make_home(
        tmp_path,
        "MA.DGSN.CCPI",
        database_url="" if database_url.startswith("sqlite") else database_url,
    )


def _revision(home: NodeHome) -> str | None:
    store = Store(home.database_url())
    try:
        return store.schema_revision()
    finally:
        store.close()


def test_a_schema_behind_is_refused_until_db_upgrade(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(home.database_url())
    migrate_to(store, "0010")
    store.close()
    with pytest.raises(SchemaMismatch, match=r"revision 0010 .*liaison db upgrade"):
        RunningNode(home).start()
    code, out, err = run(capsys, "audit", "verify", "--home", str(home.path))
    assert code == 1
    assert "liaison db upgrade" in out + err
    assert _revision(home) == "0010"

    code, out, err = run(capsys, "db", "upgrade", "--home", str(home.path))
    assert (code, err) == (0, "")
    assert f"from revision 0010 to {SCHEMA_HEAD}" in out
    code, out, _ = run(capsys, "db", "upgrade", "--home", str(home.path))
    assert code == 0
    assert "nothing to do" in out
    node = RunningNode(home).start()
    node.stop()


def test_a_schema_ahead_is_refused_and_db_upgrade_changes_nothing(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(home.database_url())
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()
    with pytest.raises(SchemaMismatch, match="does not know"):
        RunningNode(home).start()
    code, out, err = run(capsys, "db", "upgrade", "--home", str(home.path))
    assert code == 1
    assert "newer version" in out + err
    assert _revision(home) == "0099"
