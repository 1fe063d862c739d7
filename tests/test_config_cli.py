"""`liaison config show | check | set`: the node's settings, checked as the node checks
them, with every credential kept pointing at the local API when its address changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from liaison.client import LiaisonClient
from liaison.server.home import NodeHome
from tests.cli_homes import run, run_json, snapshot
from tests.conftest import RunningNode, free_port, make_home


def test_show_masks_a_database_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    config = home.path / "config.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('url = ""', 'url = "postgresql://liaison:hunter2@db.example/liaison"'),
        encoding="utf-8",
    )
    shown = run_json(capsys, "config", "show", "--home", str(home.path))
    assert isinstance(shown, dict)
    assert shown["node.agency_id"] == "MA.DGSN.CCPI"
    assert "hunter2" not in json.dumps(shown)
    assert shown["database.url"].startswith("postgresql://liaison:***@")
    code, out, _ = run(capsys, "config", "show", "--home", str(home.path))
    assert code == 0
    assert "hunter2" not in out


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
