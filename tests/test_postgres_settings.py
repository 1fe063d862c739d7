"""Where a node's database comes from: config.toml's ``database.url``, which may say
``env:LIAISON_DATABASE_URL`` (replicas set up from their environment), else the SQLite
file in its home; and a password is never in either (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from liaison.server.config import DATABASE_FROM_ENVIRONMENT, DATABASE_URL_VARIABLE, ConfigError
from liaison.server.home import DATABASE_FILE
from liaison.server.store.store import Store, sqlite_url
from tests.conftest import make_home


def test_a_home_that_asks_for_it_takes_its_database_from_the_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, postgres_url)
    home = make_home(tmp_path, "MA.DGSN.CCPI", database_url=DATABASE_FROM_ENVIRONMENT)
    assert home.database_url() == postgres_url
    assert not (home.path / DATABASE_FILE).exists()
    store = Store(postgres_url)
    try:
        assert "node-initialised" in [e.event for e in store.audit_events()]
    finally:
        store.close()


def test_an_exported_variable_moves_no_other_home(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable left exported for replicas: a new SQLite node (a demo, an init) keeps
    its own file and writes nothing into the production database."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, postgres_url)
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    assert home.database_url() == sqlite_url(home.path / DATABASE_FILE)
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def test_the_variable_must_be_set_and_hold_no_password(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATABASE_URL_VARIABLE, postgres_url)
    home = make_home(tmp_path, "MA.DGSN.CCPI", database_url=DATABASE_FROM_ENVIRONMENT)
    monkeypatch.delenv(DATABASE_URL_VARIABLE)
    with pytest.raises(ConfigError, match="is not set"):
        home.database_url()
    monkeypatch.setenv(DATABASE_URL_VARIABLE, "postgresql+psycopg://liaison:hunter2@db/x")
    with pytest.raises(ConfigError, match="holds a password") as refused:
        home.database_url()
    assert "hunter2" not in str(refused.value)
    monkeypatch.setenv(DATABASE_URL_VARIABLE, "postgresql+psycopg://liaison@db/x?password=hunter2")
    with pytest.raises(ConfigError, match="holds a password"):
        home.database_url()
