"""Admission to the peer listener: who is calling, and what they may cost.

Every ``Deliver`` call passes the gate before one byte of its request is read:

1. The presented TLS leaf certificate must be exactly a pinned peer's (the TLS
   layer also lets through certificates *issued* by a pinned key, because gRPC
   treats the pinned certificates as trust anchors).
2. The peer must be under its limits: connections with calls in flight, calls
   in flight, a token-bucket rate, and a storage quota.
3. Reading the request reserves the largest envelope size against the peer's
   receive budget, then keeps the envelope's real size reserved until the
   call ends, so one peer holds at most ``peer_receive_bytes`` of envelopes in
   memory however many calls it opens; all peers together hold at most
   ``receive_bytes`` while envelopes are processed.

A refusal raises ``Refused``. Refusals are audited once per burst (the first
refusal after a quiet period), not once per call, and counted in the log when
the burst ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from liaison.keys.card import PeerCard
from liaison.server.config import Limits
from liaison.server.peers import PeerDirectory

log = logging.getLogger(__name__)

T = TypeVar("T")
# A burst of refusals ends after this long without one.
BURST_QUIET_SECONDS = 10.0


class Limit(enum.StrEnum):
    """Why the gate refused a call; the value is the audit reason."""

    UNPINNED_CERTIFICATE = "UNPINNED_CERTIFICATE"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    TOO_MANY_CALLS = "TOO_MANY_CALLS"
    RATE_LIMITED = "RATE_LIMITED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    READ_TIMEOUT = "READ_TIMEOUT"


class Refused(Exception):
    """The gate refused a call; ``message`` is what the caller is told."""

    def __init__(self, limit: Limit, message: str) -> None:
        self.limit = limit
        self.message = message
        super().__init__(f"{limit.value}: {message}")


# (limit, peer or None, refusals in the burst that just began) -> audit it
AuditRefusal = Callable[[Limit, str | None, str], Awaitable[None]]


class ByteBudget:
    """A weighted semaphore over bytes: ``reserve(n)`` waits until ``n`` more fit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._changed = asyncio.Condition()

    async def reserve(self, size: int) -> int:
        """Reserve ``size`` bytes (at most the capacity); returns what was reserved."""
        size = min(size, self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.capacity)
            self.used += size
        return size

    async def release(self, size: int) -> None:
        async with self._changed:
            self.used -= size
            self._changed.notify_all()


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Burst:
    started: float
    last: float
    count: int = 1


@dataclass
class _PeerState:
    budget: ByteBudget
    bucket: TokenBucket
    calls: int = 0
    connections: Counter[str] = field(default_factory=Counter)


class PeerGate:
    def __init__(
        self,
        limits: Limits,
        peers: PeerDirectory,
        *,
        stored_bytes: dict[str, int],
        audit: AuditRefusal,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._peers = peers
        self._audit = audit
        self._monotonic = monotonic
        self._stored = defaultdict(int, stored_bytes)
        self._states: dict[str, _PeerState] = {}
        self._bursts: dict[tuple[Limit, str | None], _Burst] = {}
        self.receive_budget = ByteBudget(limits.receive_bytes)

    def identify(self, leaf_sha256: str | None) -> PeerCard | None:
        """The pinned peer whose certificate is exactly this leaf, if any."""
        if leaf_sha256 is None:
            return None
        return self._peers.trust.peer_by_tls_fingerprint(leaf_sha256)

    def in_flight(self, agency_id: str) -> int:
        """Calls from ``agency_id`` admitted and not yet finished."""
        state = self._states.get(agency_id)
        return state.calls if state is not None else 0

    def stored(self, agency_id: str, size: int) -> None:
        """Count ``size`` bytes stored from ``agency_id`` against its quota."""
        self._stored[agency_id] += size

    async def refuse(self, limit: Limit, agency_id: str | None, message: str) -> Refused:
        """Count a refusal, audit it if it starts a burst, and return the error to raise."""
        now = self._monotonic()
        key = (limit, agency_id)
        burst = self._bursts.get(key)
        if burst is not None and now - burst.last < BURST_QUIET_SECONDS:
            burst.count += 1
            burst.last = now
        else:
            self.end_quiet_bursts()
            self._bursts[key] = _Burst(started=now, last=now)
            log.warning("peer %s: refusing calls: %s", agency_id or "(unpinned)", limit.value)
            try:
                await self._audit(limit, agency_id, message)
            except Exception:  # the refusal stands even if the audit trail cannot take it now
                log.exception("could not audit the refusal of %s", agency_id or "(unpinned)")
        return Refused(limit, message)

    def end_quiet_bursts(self) -> None:
        """Log the count of every burst that has been quiet long enough, and forget it."""
        now = self._monotonic()
        for (limit, agency_id), burst in list(self._bursts.items()):
            if now - burst.last >= BURST_QUIET_SECONDS:
                del self._bursts[(limit, agency_id)]
                log.warning(
                    "peer %s: %d calls refused (%s) in %.0f s",
                    agency_id or "(unpinned)",
                    burst.count,
                    limit.value,
                    burst.last - burst.started,
                )

    @contextlib.asynccontextmanager
    async def admit(self, peer: PeerCard, connection: str) -> AsyncIterator[Admitted]:
        """Admit one call from ``peer`` on ``connection`` or raise ``Refused``."""
        limits = self._limits
        state = self._state(peer.agency_id)
        refusal: tuple[Limit, str] | None = None
        if connection not in state.connections and len(state.connections) >= (
            limits.peer_connections
        ):
            refusal = (
                Limit.TOO_MANY_CONNECTIONS,
                f"more than {limits.peer_connections} connections with calls in flight",
            )
        elif state.calls >= limits.peer_calls:
            refusal = (Limit.TOO_MANY_CALLS, f"more than {limits.peer_calls} calls in flight")
        elif not state.bucket.take(self._monotonic()):
            refusal = (
                Limit.RATE_LIMITED,
                f"more than {limits.peer_rate_per_second:g} envelopes per second",
            )
        elif self._stored[peer.agency_id] >= limits.peer_quota_bytes:
            refusal = (
                Limit.QUOTA_EXCEEDED,
                f"storage quota of {limits.peer_quota_bytes} bytes is used up",
            )
        if refusal is not None:
            raise await self.refuse(refusal[0], peer.agency_id, refusal[1])
        state.calls += 1
        state.connections[connection] += 1
        admitted = Admitted(self, peer, state.budget)
        try:
            yield admitted
        finally:
            state.calls -= 1
            state.connections[connection] -= 1
            if state.connections[connection] <= 0:
                del state.connections[connection]
            await admitted.release()

    def _state(self, agency_id: str) -> _PeerState:
        state = self._states.get(agency_id)
        if state is None:
            limits = self._limits
            state = _PeerState(
                budget=ByteBudget(limits.peer_receive_bytes),
                bucket=TokenBucket(
                    rate=limits.peer_rate_per_second,
                    burst=limits.peer_rate_burst,
                    tokens=limits.peer_rate_burst,
                    at=self._monotonic(),
                ),
            )
            self._states[agency_id] = state
        return state


class Admitted:
    """An admitted call: reads its one request within the peer's receive budget."""

    def __init__(self, gate: PeerGate, peer: PeerCard, budget: ByteBudget) -> None:
        self._gate = gate
        self._peer = peer
        self._budget = budget
        self._held = 0
        self._global = 0

    async def read(self, receive: Callable[[], Awaitable[T]], size: Callable[[T], int]) -> T:
        """Read the request with ``receive``; ``size`` tells how many bytes it holds.

        Reserves the largest envelope while reading, then only what arrived.
        Raises ``Refused`` if the read takes longer than the read timeout.
        """
        limits = self._gate._limits
        self._held = await self._budget.reserve(limits.max_grpc_message_bytes)
        try:
            async with asyncio.timeout(limits.peer_read_timeout_seconds):
                data = await receive()
        except TimeoutError:
            raise await self._gate.refuse(
                Limit.READ_TIMEOUT,
                self._peer.agency_id,
                f"the request did not arrive within {limits.peer_read_timeout_seconds:g} s",
            ) from None
        arrived = size(data)
        kept = min(arrived, self._held)
        await self._budget.release(self._held - kept)
        self._held = kept
        self._global = await self._gate.receive_budget.reserve(arrived)
        return data

    async def release(self) -> None:
        if self._held:
            await self._budget.release(self._held)
            self._held = 0
        if self._global:
            await self._gate.receive_budget.release(self._global)
            self._global = 0
