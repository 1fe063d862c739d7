"""What every ``liaison`` command module shares: where the home is, JSON output."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
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


def home_path(args: argparse.Namespace) -> Path:
    chosen = args.home or os.environ.get("LIAISON_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser()


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
    secret = passphrase(args.passphrase_file, what="the credential's key")
    return LiaisonClient.from_home(home_path(args), identity=args.identity, passphrase=secret)


def unlocked_home(args: argparse.Namespace) -> NodeHome:
    """The home, with the passphrase of its keys (asked for now, before any work)."""
    from liaison.server.home import NodeHome  # noqa: PLC0415 - loaded when used

    secret = passphrase(args.passphrase_file, what="the node's keys")
    return NodeHome.unlocked(home_path(args), secret)


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
