"""Errors the node's services raise, named by whose fault they are."""

from __future__ import annotations


class ServerError(Exception):
    """Base of the node's errors."""


class RequestError(ServerError):
    """The local user's request is invalid (bad notice, unknown peer, bad argument)."""


class NotFound(ServerError):
    """The request names a message this node does not hold."""
