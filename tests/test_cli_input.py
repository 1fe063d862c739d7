"""No input a user can type makes the CLI print a traceback: a bad option value, a
typo, a number out of range is one line on standard error and exit 2, and a library
call takes a path as text or as a Path."""

from __future__ import annotations

from pathlib import Path

import pytest

from liaison.client import LiaisonClient
from liaison.client.cli import main

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
