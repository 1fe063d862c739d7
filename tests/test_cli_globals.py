"""The CLI as git and gh read (issue 9): global options before or after the command, a
missing home that names where it looked, a pager on a terminal, a progress line."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from liaison.client.cli import build_parser
from liaison.server.home import NodeHome
from tests.cli_homes import run, run_init
from tests.conftest import TEST_PASSPHRASE, RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"


@pytest.fixture
def home(tmp_path: Path) -> NodeHome:
    return make_home(tmp_path, A_ID)


@pytest.mark.parametrize(
    "words",
    [
        ["--home", "{home}", "--json", "peers", "list"],
        ["peers", "list", "--home", "{home}", "--json"],
        ["--json", "peers", "list", "--home", "{home}"],
        ["--home", "{home}", "peers", "list", "--json"],
        ["--home", "/no/such/home", "peers", "list", "--home", "{home}", "--json"],
    ],
)
def test_global_options_go_before_or_after_the_command(
    home: NodeHome, capsys: pytest.CaptureFixture[str], words: list[str]
) -> None:
    code, out, err = run(capsys, *(w.format(home=home.path) for w in words))
    assert code == 0, err
    assert json.loads(out) == []


def test_an_option_before_the_command_is_not_overwritten_by_its_default() -> None:
    args = build_parser().parse_args(["--home", "/h", "-q", "-vv", "--json", "inbox"])
    assert (args.home, args.quiet, args.verbose, args.json) == ("/h", True, 2, True)
    args = build_parser().parse_args(["inbox"])
    assert (args.home, args.quiet, args.verbose, args.json) == (None, False, 0, False)


@pytest.mark.parametrize(
    ("how", "expected"),
    [("option", "given by --home"), ("variable", "given by $LIAISON_HOME")],
)
def test_no_home_names_the_path_how_it_was_chosen_and_init(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
    expected: str,
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("LIAISON_HOME", str(missing))
    monkeypatch.delenv("LIAISON_PASSPHRASE")  # the home is checked before any passphrase
    words = ["--home", str(missing)] if how == "option" else []
    code, out, err = run(capsys, *words, "inbox")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert f"no node home at {missing} ({expected})" in err
    assert f"liaison init --home {missing}" in err
    assert "~/.liaison" in err


def test_quiet_keeps_results_and_drops_hints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def init(name: str, *extra: str) -> str:
        code, out, err = run_init(capsys, tmp_path / name, A_ID, extra=extra)
        assert code == 0, err
        assert "Initialised node" in out
        return err

    assert "Next:" in init("loud")
    assert "Next:" not in init("quiet", "-q")


def test_verbose_raises_the_log_level(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        root.handlers.clear()
        run(capsys, "-v", "peers", "list", "--home", str(home.path))
        assert root.level == logging.INFO
        root.handlers.clear()
        run(capsys, "peers", "list", "-q", "--home", str(home.path))
        assert root.level == logging.ERROR
    finally:
        root.handlers.clear()
        root.setLevel(before)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``liaison ARGS`` with a pseudo-terminal as standard output and error."""
    main, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "liaison.client.cli", *args],
        stdout=secondary,
        stderr=secondary,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closes when the command ends
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_long_output_on_a_terminal_goes_through_the_pager(home: NodeHome, tmp_path: Path) -> None:
    paged = tmp_path / "paged.txt"
    pager = f"{sys.executable} -c \"import sys; open('{paged}', 'w').write(sys.stdin.read())\""
    args = ["audit", "log", "--home", str(home.path)]
    code, shown = _on_a_terminal(args, {"PAGER": pager, "LINES": "4"})
    assert code == 0, shown
    assert "node-initialised" in paged.read_text(encoding="utf-8")
    assert "node-initialised" not in shown

    paged.unlink()
    code, shown = _on_a_terminal(args, {"PAGER": pager, "LINES": "500"})
    assert code == 0
    assert "node-initialised" in shown  # it fits: no pager
    assert not paged.exists()

    code, out = _piped([*args, "--json"], {"PAGER": pager, "LINES": "4"})
    assert code == 0
    assert "node-initialised" in out  # not a terminal: no pager
    assert not paged.exists()


def _piped(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "liaison.client.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
        timeout=60,
    )
    return done.returncode, done.stdout


def test_a_large_send_shows_a_progress_line_on_a_terminal(tmp_path: Path) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    attachment = tmp_path / "scan.bin"
    attachment.write_bytes(os.urandom(3 * 1024 * 1024))
    body = tmp_path / "body.txt"
    body.write_text(sample_notice().body, encoding="utf-8")
    a = RunningNode(a_home).start()
    try:
        args = [
            "send",
            "--home",
            str(a_home.path),
            "--to",
            B_ID,
            "--case-ref",
            "BIG-1",
            "--category",
            "cybercrime",
            "--tlp",
            "green",
            "--subject",
            "Large",
            "--body-file",
            str(body),
            "--attach",
            str(attachment),
            "--wait",
            "0",
        ]
        env = {"LIAISON_PASSPHRASE": TEST_PASSPHRASE}
        code, shown = _on_a_terminal(args, env)
        assert code == 0, shown
        assert "sending the notice to the node (3.1 MB)" in shown
        code, out = _piped(args, env)
        assert code == 0
        assert "sending" not in out
    finally:
        a.stop()


def test_a_node_that_is_not_running_is_named_with_how_to_start_it(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "inbox", "--home", str(home.path))
    assert code == 3
    assert out == ""
    api = home.config().api_listen
    assert f"local API at {api} is unreachable" in err
    assert f"Start it with: liaison serve --home {home.path}" in err
    assert err.count("\n") == 1


def _commands() -> list[str]:
    from liaison.client.cli import _leaves  # noqa: PLC0415 - the parser's own walk

    return [leaf.prog.removeprefix("liaison ") for leaf in _leaves(build_parser())]


@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*command.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: liaison {command}")
    assert "--home" in text  # the global options reach every command


def test_help_shows_examples_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["send", "--help"])
    text = capsys.readouterr().out
    assert "examples:\n  liaison send --to DE.BPOL.LO-RABAT --notice notice.toml" in text
    assert "(default: 10)" in text  # --wait
    assert "(default: False)" not in text
    assert "(default: None)" not in text


def test_an_error_line_escapes_control_characters_and_keeps_line_breaks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The node's words reach the error line (they may carry a peer's); a terminal
    escape in them is shown escaped, a line break of a multi-line warning kept."""
    from liaison.client.cli import _failed  # noqa: PLC0415 - the one printer of errors

    args = build_parser().parse_args(["inbox"])
    assert _failed(args, "refused \x1b]0;pwned\x07 here\nsecond line", 4, "X") == 4
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "\x07" not in err
    assert err == "liaison: refused \\x1b]0;pwned\\x07 here\nsecond line\n"
