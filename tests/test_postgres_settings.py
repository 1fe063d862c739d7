"""Where a node's database comes from: config.toml, else $LIAISON_DATABASE_URL, else the
SQLite file in its home; and a password is never in either (issue 11)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from liaison.server.config import DATABASE_URL_VARIABLE, ConfigError
from liaison.server.home import DATABASE_FILE
from liaison.server.store.store import Store
from tests.conftest import make_home


def test_a_home_takes_its_database_from_the_environment(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replicas that share one database take its URL from their environment."""
    monkeypatch.setenv(DATABASE_URL_VARIABLE, postgres_url)
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    assert home.database_url() == postgres_url
    assert not (home.path / DATABASE_FILE).exists()
    store = Store(postgres_url)
    try:
        assert "node-initialised" in [e.event for e in store.audit_events()]
    finally:
        store.close()


def test_config_comes_before_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    monkeypatch.setenv(DATABASE_URL_VARIABLE, "postgresql+psycopg://liaison@db.example/x")
    configured = dataclasses.replace(home.config(), database_url="sqlite:////elsewhere.db")
    assert home.database_url(configured) == "sqlite:////elsewhere.db"


def test_a_password_in_the_environment_url_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    monkeypatch.setenv(DATABASE_URL_VARIABLE, "postgresql+psycopg://liaison:hunter2@db/x")
    with pytest.raises(ConfigError, match="holds a password") as refused:
        home.database_url()
    assert "hunter2" not in str(refused.value)
