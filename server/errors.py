"""Errors the node's services raise, named by whose fault they are."""

from __future__ import annotations


class ServerError(Exception):
    """Base of the node's errors."""


class RequestError(ServerError):
    """The local user's request is invalid (bad notice, unknown peer, bad argument)."""


class NotFound(ServerError):
    """The request names a message this node does not hold."""


class Withheld(ServerError):
    """The caller's identity may not have what it asked for (a TLP:RED body it is not a
    reader of); the refusal is audited."""


def one_line(error: BaseException) -> str:
    """An exception as one log line: its class and the first line of its message
    (a database error's message goes on with the SQL statement)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
