"""`liaison config show | check | set`: the node's settings, checked as the node checks
them, with every credential kept pointing at the local API when its address changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from liaison.client import LiaisonClient
from liaison.server.home import NodeHome
from tests.cli_homes import run, snapshot
from tests.conftest import RunningNode, free_port, make_home


def test_a_database_password_in_the_config_is_refused_and_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A password belongs in libpq's passfile or PGPASSWORD (issue 11): a config.toml that
    holds one is refused, and the refusal does not repeat it."""
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    config = home.path / "config.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('url = ""', 'url = "postgresql://liaison:hunter2@db.example/liaison"'),
        encoding="utf-8",
    )
    for command in (("config", "show"), ("config", "check")):
        code, out, err = run(capsys, *command, "--home", str(home.path))
        assert code == 2
        assert "holds a password" in err
        assert "passfile" in err
        assert "hunter2" not in out + err


def test_config_set_refuses_a_database_url_with_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    before = (home.path / "config.toml").read_bytes()
    url = "postgresql://liaison:hunter2@db.example/liaison"
    code, out, err = run(capsys, "config", "set", "database.url", url, "--home", str(home.path))
    assert code == 2
    assert "holds a password" in err
    assert "hunter2" not in out + err
    assert (home.path / "config.toml").read_bytes() == before


def test_a_new_api_address_reaches_every_credential(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    new = f"127.0.0.1:{free_port()}"
    code, out, err = run(capsys, "config", "set", "listen.api", new, "--home", str(home.path))
    assert code == 0, err
    assert "admin" in out
    assert (home.path / "credentials" / "admin" / "target").read_text().strip() == new
    assert home.config().api_listen == new
    node = RunningNode(home).start()
    try:
        # Straight from the credential folder, as its holder elsewhere would use it.
        folder = home.path / "credentials" / "admin"
        with LiaisonClient.from_credential_dir(folder) as client:
            assert client.list_page().messages == []
        assert node.node is not None
        events = [e.event for e in node.node.store.audit_events(limit=10_000)]
        assert "config-changed" in events
    finally:
        node.stop()
    assert run(capsys, "config", "check", "--home", str(home.path))[0] == 0


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("node.endpoint", "x:1", "published in the node's card"),
        ("colour", "red", "is not a setting"),
        ("listen.api", "nowhere", "HOST:PORT"),
        ("listen.api", "0.0.0.0:7700", "not a loopback address"),
        ("limits.list_default", "-4", "positive int"),
        ("limits.list_default", "many", "positive int"),
        ("policy.disclose_reads", "maybe", "true or false"),
    ],
)
def test_a_bad_setting_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, problem: str
) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    before = snapshot(home.path)
    code, out, err = run(capsys, "config", "set", key, value, "--home", str(home.path))
    assert (code, out) == (2, "")
    assert problem in err
    assert err.count("\n") == 1
    assert snapshot(home.path) == before


def test_a_limit_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    argv = ("config", "set", "limits.list_default", "20", "--home", str(home.path))
    assert run(capsys, *argv)[0] == 0
    assert NodeHome(home.path).config().limits.list_default == 20
