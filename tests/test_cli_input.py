"""No input a user can type makes the CLI print a traceback: a bad option value, a
typo, a number out of range is one line on standard error and exit 2, and a library
call takes a path as text or as a Path."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from liaison.client import LiaisonClient
from liaison.client.cli import main
from liaison.server import home as home_module
from liaison.server.config import CONFIG_FILE, ConfigError
from liaison.server.store import users
from liaison.server.store.store import Store
from tests.cli_homes import run, run_init
from tests.conftest import RunningNode, free_port, make_home

MESSAGE = "01a22659-f963-7031-83e4-fa878c5b384f"

BAD = [
    (("inbox", "--limit", "-1"), "between 0 and"),
    (("inbox", "--limit", "99999999999999999999"), "between 0 and"),
    (("inbox", "--limit", "ten"), "not a whole number"),
    (("status", MESSAGE, "--wait=-5"), "between 0 and"),
    (("status", MESSAGE, "--wait", "1e9"), "not a whole number"),
    (("send", "--to", "X", "--wait", "-5", "notice.json"), "between 0 and"),
    (("watch", "--after", "-3"), "between 0 and"),
    (("attachment", "save", MESSAGE, "0"), "between 1 and"),
    (("audit", "log", "--limit", "-1"), "between 0 and"),
    (("sned",), "did you mean 'send'"),
    (("users", "add", "x", "--role", "boss"), "is not one of operator"),
    (("inbox", "--no-such-option"), "unrecognized arguments"),
]


@pytest.mark.parametrize("identity", ["../admin", "Admin", "x y"])
def test_an_identity_that_is_no_name_is_one_line(
    identity: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "inbox", "--identity", identity)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "is not an identity name" in err


@pytest.mark.parametrize(("argv", "problem"), BAD)
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: tuple[str, ...], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(list(argv))
    out, err = capsys.readouterr()
    assert ended.value.code == 2
    assert out == ""
    assert err.count("\n") == 1, err
    assert problem in err
    assert "Traceback" not in err


def test_the_library_takes_a_path_as_text(tmp_path: Path) -> None:
    """`from_home("/path")` raised TypeError; now it reads the folder (absent here)."""
    with pytest.raises(Exception) as missing:
        LiaisonClient.from_home(str(tmp_path), passphrase="x")
    assert not isinstance(missing.value, TypeError)
    assert "credential" in str(missing.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "--database-url"),
        ("mysql://somewhere/db", "not supported"),
        ("not a url", "not a database URL"),
    ],
)
def test_init_checks_the_database_first_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    """The issue: `init --database-url postgresql://…` crashed and left a half-made home
    that the next `init` refused."""
    home = tmp_path / "home"
    code, _, err = run_init(capsys, home, "MA.DGSN.CCPI", extra=("--database-url", url))
    assert code == 2
    assert problem in err
    assert err.count("\n") == 1
    assert not home.exists()


def test_a_failed_init_leaves_nothing_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object, **_kwargs: object) -> bool:
        raise ConfigError("the disk failed, say")

    monkeypatch.setattr(home_module, "register_admin", broken)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine", encoding="utf-8")
    for folder in (tmp_path / "new", existing):
        code, _, err = run_init(capsys, folder, "MA.DGSN.CCPI")
        assert code == 2
        assert "the disk failed" in err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    assert run_init(capsys, existing, "MA.DGSN.CCPI")[0] == 0


def test_a_changed_api_port_is_found_from_the_home(tmp_path: Path) -> None:
    """The issue: after `listen.api` changed in config.toml, credentials/admin/target still
    named the old port, and neither the CLI nor the library reached the node."""
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    config = home.path / CONFIG_FILE
    old = home.config().api_listen
    new = f"127.0.0.1:{free_port()}"
    config.write_text(config.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    node = RunningNode(home).start()
    try:
        with LiaisonClient.from_home(str(home.path)) as client:
            assert client.list_page().messages == []
    finally:
        node.stop()


def test_the_local_api_stays_on_this_machine_unless_said_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--api 0.0.0.0:…` is refused unless meant (--api-public), and then the API's
    certificate names the host names clients dial; a config edited to a public address
    without saying so stops the node with one line."""
    port = free_port()
    code, _, err = run_init(
        capsys, tmp_path / "a", "MA.DGSN.CCPI", extra=("--api", f"0.0.0.0:{port}")
    )
    assert code == 2
    assert "not a loopback address" in err
    assert not (tmp_path / "a").exists()
    extra = ("--api", f"0.0.0.0:{port}", "--api-public", "--api-name", "liaison.ccpi.example")
    assert run_init(capsys, tmp_path / "b", "MA.DGSN.CCPI", extra=extra)[0] == 0
    certificate = x509.load_pem_x509_certificate(
        (tmp_path / "b" / "api" / "server.crt").read_bytes()
    )
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "liaison.ccpi.example" in names.get_values_for_type(x509.DNSName)
    home = make_home(tmp_path / "c", "MA.DGSN.CCPI")
    config = home.path / CONFIG_FILE
    text = config.read_text(encoding="utf-8").replace(home.config().api_listen, f"0.0.0.0:{port}")
    config.write_text(text, encoding="utf-8")
    code, _, err = run(capsys, "serve", "--home", str(home.path))
    assert code == 2
    assert "api_public = true" in err
    assert err.count("\n") == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--version"])
    assert ended.value.code == 0
    assert capsys.readouterr().out.startswith("liaison ")


def test_with_json_an_error_is_json_with_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "peers", "list", "--home", str(tmp_path / "none"), "--json")
    assert code == 2
    assert out == ""
    problem = json.loads(err)
    assert problem["exit_code"] == 2
    assert "no node home at" in problem["error"]
    with pytest.raises(SystemExit) as ended:
        main(["inbox", "--json", "--limit", "-1"])
    assert ended.value.code == 2
    usage = json.loads(capsys.readouterr().err)
    assert usage["kind"] == "UsageError"
    assert "between 0 and" in usage["error"]


def test_help_and_usage_errors_load_neither_grpc_nor_the_server() -> None:
    """`liaison --help` took 1.6 to 3.2 s because it imported the server. What it imports
    is checked here (its time is the benchmark's business, not a test's)."""
    probe = (
        "import sys\n"
        "from liaison.client.cli import main\n"
        "for argv in (['--help'], ['inbox', '--limit', '-1'], ['users', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('grpc', 'sqlalchemy', 'alembic', 'liaison.server.node',\n"
        "         'liaison.server.home', 'liaison.client.api') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert "HEAVY []" in done.stderr, done.stderr


def test_an_older_home_keeps_its_admin_when_a_user_came_first(tmp_path: Path) -> None:
    """The review's finding: on a home made before named identities, a `users add` before
    the first start left admin unregistered, and locked out."""
    home = make_home(tmp_path, "MA.DGSN.CCPI")
    with sqlite3.connect(home.path / "node.db") as db:  # as before identities existed
        db.execute("DELETE FROM api_certificates")
        db.execute("DELETE FROM api_users")
    store = Store(home.database_url())
    try:
        with store.write() as session:
            users.add(
                session,
                name="alice",
                role="operator",
                certificate_sha256="0" * 64,
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
                actor="admin",
                now=dt.datetime.now(dt.UTC),
            )
    finally:
        store.close()
    node = RunningNode(home).start()
    try:
        with LiaisonClient.from_home(home.path) as client:
            assert client.list_page().messages == []
    finally:
        node.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite://", "in-memory"),
        ("postgresql://u:secret@h:abc/db", "not a database URL"),
        ("postgresql+asyncpg://u@h/db", "asynchronous"),
    ],
)
def test_init_refuses_a_database_it_cannot_keep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    code, _, err = run_init(
        capsys, tmp_path / "home", "MA.DGSN.CCPI", extra=("--database-url", url)
    )
    assert code == 2
    assert problem in err
    assert "secret" not in err
    assert not (tmp_path / "home").exists()


def test_init_refuses_a_database_url_with_a_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The password would be written to config.toml (issue 11: never there)."""
    url = "postgresql+psycopg://liaison:hunter2@127.0.0.1:1/liaison"
    code, out, err = run_init(
        capsys, tmp_path / "home", "MA.DGSN.CCPI", extra=("--database-url", url)
    )
    assert code == 2
    assert "holds a password" in err
    assert "hunter2" not in out + err
    assert not (tmp_path / "home").exists()


def test_init_refuses_a_database_that_holds_a_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_home(tmp_path, "MA.DGSN.CCPI")
    url = f"sqlite:///{first.path / 'node.db'}"
    code, _, err = run_init(
        capsys, tmp_path / "second", "DE.BPOL.LO-RABAT", extra=("--database-url", url)
    )
    assert code == 2
    assert "holds a node's tables" in err
    assert not (tmp_path / "second").exists()


def test_init_on_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "a-file"
    target.write_text("mine", encoding="utf-8")
    code, _, err = run_init(capsys, target, "MA.DGSN.CCPI")
    assert code == 2
    assert "is a file, not a folder" in err
    assert target.read_text(encoding="utf-8") == "mine"
