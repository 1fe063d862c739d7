"""Where the CLI gets a passphrase: never from a command line or the config file.

In order: ``--passphrase-file FILE`` (refused if others can read it), the
``LIAISON_PASSPHRASE`` environment variable, or a prompt on the terminal. A
new passphrase (``init``, ``keys passphrase``) comes from
``--new-passphrase-file``, ``LIAISON_NEW_PASSPHRASE`` (``LIAISON_PASSPHRASE``
for ``init``), or is typed twice.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from pathlib import Path

from liaison.client.errors import UsageError
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase

NEW_PASSPHRASE_VARIABLE = "LIAISON_NEW_PASSPHRASE"  # noqa: S105 - a variable's name
MIN_NEW_PASSPHRASE_LENGTH = 12


def passphrase(file: str | None, *, what: str) -> Passphrase:
    """The passphrase of ``what`` (e.g. "the node's keys"); ``UsageError`` if none can be had."""
    if file:
        return Passphrase(_read_file(file))
    secret = os.environ.get(PASSPHRASE_VARIABLE)
    if secret:
        return Passphrase(secret)
    if sys.stdin.isatty():
        return Passphrase(_ask(f"Passphrase of {what}: "))
    raise UsageError(
        f"the passphrase of {what} is needed: set {PASSPHRASE_VARIABLE} or use "
        "--passphrase-file (there is no terminal to ask on)"
    )


def new_passphrase(file: str | None, *, variable: str, what: str) -> Passphrase:
    """A new passphrase for ``what``: from ``file``, ``variable``, or typed twice."""
    if file:
        secret = _read_file(file)
    elif os.environ.get(variable):
        secret = os.environ[variable]
    elif sys.stdin.isatty():
        secret = _ask(f"New passphrase of {what}: ")
        if _ask("The same again: ") != secret:
            raise UsageError("the two passphrases differ; nothing was changed")
    else:
        raise UsageError(
            f"a new passphrase is needed for {what}: set {variable} or use "
            "--new-passphrase-file (there is no terminal to ask on)"
        )
    if len(secret) < MIN_NEW_PASSPHRASE_LENGTH:
        raise UsageError(
            f"the new passphrase is shorter than {MIN_NEW_PASSPHRASE_LENGTH} characters"
        )
    return Passphrase(secret)


def _read_file(file: str) -> str:
    path = Path(file)
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"passphrase file {path} is accessible to others (mode {mode & 0o777:o}); "
                f"run: chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"passphrase file {path} is not UTF-8 text") from exc
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise UsageError(f"passphrase file {path} is empty")
    return secret


def _ask(prompt: str) -> str:
    secret = getpass.getpass(prompt)
    if not secret:
        raise UsageError("no passphrase given")
    return secret
