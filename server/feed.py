"""Wakes those who follow the audit trail (``NodeService.Watch``) when it grows.

The group committer tells the feed after each commit; the housekeeping round
tells it when another process (``liaison peers``, ``keys rotate``) wrote events.
A follower reads what is new from the database itself, so a missed wake-up
costs at most one round, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib


class AuditFeed:
    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def grew(self) -> None:
        """New events may be in the audit trail: wake every follower."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until the trail grows, or ``timeout`` seconds (then the caller looks anyway)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
