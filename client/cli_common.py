"""What every ``liaison`` command module shares: where the home is, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liaison.client import render
from liaison.client.errors import UsageError
from liaison.client.passphrase import passphrase
from liaison.keys.notice import IDENTITY_NAME

if TYPE_CHECKING:  # the CLI starts without gRPC or the server: they load when used
    from liaison.client.api import LiaisonClient
    from liaison.server.home import NodeHome

DEFAULT_HOME = Path("~/.liaison")
HOME_VARIABLE = "LIAISON_HOME"


def home_path(args: argparse.Namespace, *, new: bool = False) -> Path:
    """The node home: ``--home``, else ``$LIAISON_HOME``, else ``~/.liaison``.

    Unless ``new`` (``init``), it must be a node home already: ``UsageError`` says
    which path was tried, how it was chosen, and how to make one.
    """
    given = getattr(args, "home", None)
    chosen = given or os.environ.get(HOME_VARIABLE) or DEFAULT_HOME
    path = Path(chosen).expanduser()
    if new or (path / "config.toml").is_file():
        return path
    how = "--home" if given else f"${HOME_VARIABLE}" if os.environ.get(HOME_VARIABLE) else None
    where = (
        f"given by {how}" if how else f"the default, as neither --home nor ${HOME_VARIABLE} is set"
    )
    raise UsageError(
        f"no node home at {render.safe(str(path))} ({where}); the home is --home, else "
        f"${HOME_VARIABLE}, else {DEFAULT_HOME}. Create one with `liaison init --home "
        f"{render.safe(str(path))} --agency ID --name NAME`, or point --home at an "
        "existing one"
    )


def print_json(value: Any) -> None:
    print(render.json_text(value))


def api_client(args: argparse.Namespace) -> LiaisonClient:
    """The local API, with the credential ``--identity`` (its key's passphrase asked)."""
    from liaison.client.api import LiaisonClient  # noqa: PLC0415 - loaded when used

    if not IDENTITY_NAME.fullmatch(args.identity):
        raise UsageError(
            f"--identity {render.safe(args.identity)!r} is not an identity name "
            "(lower-case letters, digits, '.', '_' and '-')"
        )
    home = home_path(args)  # before the passphrase is asked
    secret = passphrase(args.passphrase_file, what="the credential's key")
    return LiaisonClient.from_home(home, identity=args.identity, passphrase=secret)


def unlocked_home(args: argparse.Namespace) -> NodeHome:
    """The home, with the passphrase of its keys (asked for now, before any work)."""
    from liaison.server.home import NodeHome  # noqa: PLC0415 - loaded when used

    home = home_path(args)  # before the passphrase is asked
    secret = passphrase(args.passphrase_file, what="the node's keys")
    return NodeHome.unlocked(home, secret)


def count(low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``; anything else is a usage
    error of one line (exit 2), never a traceback."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    parse.__name__ = "number"
    return parse


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command that imports its module only when it runs: ``liaison --help`` and the
    parser load neither gRPC nor the server."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    run.__name__ = name
    return run


def log_level(args: argparse.Namespace, usual: int = logging.WARNING) -> int:
    """The logging level ``-q`` and ``-v`` ask for, around a command's ``usual`` one."""
    if getattr(args, "quiet", False):
        return max(usual, logging.ERROR if usual >= logging.WARNING else logging.WARNING)
    steps = getattr(args, "verbose", 0) or 0
    return max(logging.DEBUG, usual - 10 * steps)


def note(args: argparse.Namespace, text: str) -> None:
    """A hint for a person (next steps, what to do with a result): on standard error,
    and not at all with ``-q`` or ``--json``."""
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
        print(text, file=sys.stderr)


class _Screen(io.StringIO):
    """What a command prints while it is paged: it was going to a terminal."""

    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def paged(args: argparse.Namespace) -> Iterator[None]:
    """Output longer than the terminal goes through a pager (``$LIAISON_PAGER``, else
    ``$PAGER``, else ``less -FRX``), as git does; only on a terminal, never with
    ``--json``. A pager that cannot start is skipped."""
    if getattr(args, "json", False) or not sys.stdout.isatty():
        yield
        return
    screen = _Screen()
    with contextlib.redirect_stdout(screen):
        yield
    text = screen.getvalue()
    pager = os.environ.get("LIAISON_PAGER") or os.environ.get("PAGER") or "less -FRX"
    if text.count("\n") < shutil.get_terminal_size().lines - 1 or pager == "cat":
        sys.stdout.write(text)
        return
    try:
        subprocess.run(shlex.split(pager), input=text, text=True, check=False)
    except (OSError, ValueError):
        sys.stdout.write(text)


@contextlib.contextmanager
def progress(args: argparse.Namespace, text: str, *, size: int) -> Iterator[None]:
    """A line on a terminal's standard error that counts the seconds while a large
    request (``size`` bytes, from 1 MiB) is under way; erased when it is done."""
    if size < PROGRESS_FROM_BYTES or getattr(args, "quiet", False) or not sys.stderr.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def tick() -> None:
        while not done.wait(0.5):
            sys.stderr.write(f"\r{text} ({size / 1e6:.1f} MB) {time.monotonic() - started:.0f} s")
            sys.stderr.flush()

    ticker = threading.Thread(target=tick, daemon=True)
    sys.stderr.write(f"{text} ({size / 1e6:.1f} MB)")
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


PROGRESS_FROM_BYTES = 1024 * 1024
