"""Delivering queued envelopes to peers: a pipelined worker per peer.

Each peer's worker keeps up to ``Limits.delivery_window`` deliveries, and up to
``Limits.delivery_window_bytes`` of envelopes, in flight over one HTTP/2 channel.
It claims due messages from the outbox (QUEUED to SENT, audited), and each
completed attempt is settled through the group committer, so deliveries that
finish together share one commit.

Failures are of three kinds, each handled once:

- **The link.** A peer that cannot be reached (connection refused, TLS
  refused, no answer in time) is *down*: its messages go back to the queue
  without a backoff of their own, the worker stops claiming, and it probes
  the peer (gRPC health over the same mutual TLS) with exponential backoff and
  jitter. The first answer releases the whole queue at once. A 60-second
  outage so costs the attempts that were in flight, not one per message per
  backoff step. HTTP/2 keepalive finds a connection that froze without
  closing, and a channel that keeps timing out is replaced.
- **A message.** An unusable receipt, or a peer's limit (``RESOURCE_EXHAUSTED``),
  puts that message back with its own exponential backoff, until its
  envelope expires.
- **This node.** A database error never ends a worker, the expiry sweep or a
  settlement: it is logged when it happens, and the step is tried again after
  a backoff. A settlement is retried until it is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from liaison.keys.card import PeerCard
from liaison.keys.certs import der_to_pem
from liaison.keys.envelope import verify_receipt
from liaison.keys.errors import ReceiptError, reason_name
from liaison.server.committer import GroupCommitter
from liaison.server.config import Limits
from liaison.server.errors import one_line
from liaison.server.exchange import Clock, utc_now
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory
from liaison.server.store import outbox
from liaison.server.store.models import FINAL_OUTBOUND_STATES, MessageState
from liaison.server.store.outbox import DeliveryOutcome, Lease, PendingDelivery
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2, peer_pb2, peer_pb2_grpc

log = logging.getLogger(__name__)

# Transport errors that say the peer cannot be reached, rather than that this message failed.
_LINK_ERRORS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# A channel whose calls time out this many times in a row is replaced by a new one.
CHANNEL_TIMEOUTS = 3
PEER_SERVICE = "liaison.v1.PeerExchange"

_RECEIPT_STATES = {
    envelope_pb2.RECEIPT_STATUS_ACCEPTED: (MessageState.DELIVERED, "accepted"),
    envelope_pb2.RECEIPT_STATUS_DUPLICATE: (MessageState.FAILED, "duplicate"),
    envelope_pb2.RECEIPT_STATUS_REJECTED: (MessageState.FAILED, "rejected"),
}
EXPIRY_SWEEP_SECONDS = 1.0
# How often a worker and the sweep look at the queue for what other replicas of the
# node queued, or left claimed when they died.
QUEUE_POLL_SECONDS = 5.0
T = TypeVar("T")


@dataclass
class _Link:
    """What a worker knows of its peer's reachability."""

    down_since: dt.datetime | None = None
    error: str = ""
    probes: int = 0
    audited: bool = False
    # Calls on the current channel that timed out in a row.
    timeouts: int = 0


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task's error, logged when it happens rather than never."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", task.get_name(), one_line(task.exception()))  # type: ignore[arg-type]


def describe_transport_error(error: grpc.aio.AioRpcError) -> str:
    """A transport failure in words an operator can act on (never the raw peer text).

    A peer that is down refuses the TCP connection; one that does not pin our
    card accepts it and closes it during TLS (with TLS 1.3 the client sees the
    socket closed right after its handshake), which tells the two apart.
    """
    code = error.code()
    details = (error.details() or "").lower()
    if code is grpc.StatusCode.UNAVAILABLE and any(
        sign in details for sign in ("handshake", "ssl", "certificate", "socket closed")
    ):
        return (
            f"{code.name}: the TLS handshake failed: the peer refuses this node's "
            "certificate (is our card pinned there?) or presents one we do not pin"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{code.name}: no answer in time"
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"{code.name}: the peer cannot be reached (down, or its address is wrong)"
    return code.name


class Delivery:
    def __init__(
        self,
        *,
        keys: OwnKeys,
        peers: PeerDirectory,
        store: Store,
        committer: GroupCommitter,
        limits: Limits,
        clock: Clock = utc_now,
        replica: str = "",
    ) -> None:
        # This replica of the node, named in the leases of the messages it claims.
        self.replica = replica
        self._keys = keys
        self._peers = peers
        self._store = store
        self._committer = committer
        self._limits = limits
        self._clock = clock
        self._wake: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._workers: dict[str, asyncio.Task[None]] = {}
        # One channel per peer: keyed by what it was made with, replaced when that changes.
        self._channels: dict[str, tuple[tuple[str, ...], grpc.aio.Channel]] = {}
        self._watchers: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        self._sweeper: asyncio.Task[None] | None = None
        # Every delivery attempt under way, across peers, so that stop() can end them.
        self._in_flight: set[asyncio.Task[None]] = set()
        # Each peer's attempts under way, and the places in its window promised to messages
        # being queued (``reserve``).
        self._flights: dict[str, set[asyncio.Task[None]]] = defaultdict(set)
        self._reserved: dict[str, int] = defaultdict(int)
        # The envelope bytes of both: what the window holds in memory.
        self._flight_bytes: dict[str, int] = defaultdict(int)
        self._reserved_bytes: dict[str, int] = defaultdict(int)
        # Peers whose queue in the database may hold messages due now: their worker claims
        # them before a new message may skip the queue (``reserve``).
        self._backlog: set[str] = set()
        self._stopped = False
        # Replaced channels, closing once the calls on them have finished.
        self._closing: set[asyncio.Task[None]] = set()
        self._retired: set[grpc.aio.Channel] = set()
        self._links: dict[str, _Link] = defaultdict(_Link)
        # Peers that are down whose next probe an operator asked for now.
        self._probe_now: set[str] = set()

    def lease(self) -> Lease:
        """A lease for a claim made now: this replica holds the message for two delivery
        timeouts, more than an attempt and its settlement take; past that, another
        replica may queue it again (the replica has died)."""
        return Lease(
            self.replica,
            self._clock() + dt.timedelta(seconds=2 * self._limits.delivery_timeout_seconds),
        )

    async def start(self) -> None:
        """Requeue what a previous run left in flight and start a worker per waiting peer."""
        now = self._clock()
        requeued = await self._committer.submit(
            lambda session: outbox.requeue_in_flight(session, now=now, replica=self.replica)
        )
        if requeued:
            log.info("%d deliveries cut off by the last stop are queued again", requeued)
        recipients = await asyncio.to_thread(self._read, outbox.recipients_with_queue)
        for recipient in recipients:
            self.notify(recipient)
        # A worker holding a revoked peer's queue sleeps until the pinned set changes.
        self._peers.subscribe(functools.partial(self._peers_changed, asyncio.get_running_loop()))
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="expiry-sweeper")

    async def stop(self) -> None:
        self._stopped = True
        tasks = [
            *self._workers.values(),
            *self._in_flight,
            *([self._sweeper] if self._sweeper else []),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers.clear()
        for _key, channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
        # Replaced channels wait out a grace for their calls; at a stop there are none
        # left (cancelled above), so they close now rather than after the grace (which
        # made a stop take as long as a delivery timeout).
        for channel in list(self._retired):
            await channel.close(grace=None)
        await asyncio.gather(*self._closing, return_exceptions=True)

    def notify(self, recipient: str) -> None:
        """Something was queued for ``recipient``: make sure its worker runs and looks."""
        if self._stopped:  # a commit that ends after the stop: the next start looks
            return
        self._backlog.add(recipient)
        self._ensure_worker(recipient)
        self._wake[recipient].set()

    def _ensure_worker(self, recipient: str) -> None:
        worker = self._workers.get(recipient)
        if worker is None or worker.done():
            self._workers[recipient] = asyncio.create_task(
                self._worker(recipient), name=f"delivery-{recipient}"
            )

    def reserve(self, recipient: str, size: int) -> bool:
        """A place in ``recipient``'s delivery window for a message of ``size`` envelope
        bytes about to be queued.

        With one, the queueing transaction claims the message as the worker would
        (``outbox.queue(claim_at=...)``) and ``hand_over`` starts its delivery: one
        transaction and one read of the envelope less per notice. There is none while
        the peer is down, its window is full (in messages, or in bytes unless nothing
        else is in flight), or older messages wait in its queue (they go first).
        """
        link = self._links.get(recipient)
        if link is not None and link.down_since is not None:
            return False
        if recipient in self._backlog:
            return False
        taken = len(self._flights[recipient]) + self._reserved[recipient]
        if taken >= self._limits.delivery_window:
            return False
        held = self._window_bytes(recipient)
        if held and held + size > self._limits.delivery_window_bytes:
            return False
        self._reserved[recipient] += 1
        self._reserved_bytes[recipient] += size
        return True

    def hand_over(self, recipient: str, size: int, pending: PendingDelivery | None) -> None:
        """Give back the place ``reserve`` gave (for ``size`` bytes): start delivering
        ``pending``, claimed when it was queued; or, with None (it was queued unclaimed,
        or the transaction failed), let the worker look at the queue."""
        self._reserved[recipient] -= 1
        self._reserved_bytes[recipient] -= size
        if recipient in self._backlog:  # a worker waiting for room looks again
            self._wake[recipient].set()
        if self._stopped:  # queued as the node stopped: its next start queues it again
            return
        card = self._peers.peer(recipient) if pending is not None else None
        if pending is None or card is None:
            # A claimed message whose peer was unpinned meanwhile goes back to the queue.
            if pending is not None:
                self._start(None, pending)
            self.notify(recipient)
            return
        self._ensure_worker(recipient)
        self._start(card, pending)

    def retry_now(self, recipient: str) -> None:
        """An operator asked for a retry: look at the queue now, and if the peer is
        down, probe it now rather than after the backoff."""
        link = self._links.get(recipient)
        if link is not None and link.down_since is not None:
            link.probes = 0
            self._probe_now.add(recipient)
        self.notify(recipient)

    def cancelled(self, message_id: str) -> None:
        """A queued message was cancelled: whoever waits for it learns it is final."""
        self._settled(message_id)

    def _peers_changed(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called from the thread that refreshed the peers; the loop may be gone at shutdown.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        # A peer pinned again or reinstated: the messages held for it are due.
        for recipient in self._workers:
            self._backlog.add(recipient)
            self._wake[recipient].set()

    def watch(self, message_id: str) -> asyncio.Future[None]:
        """A future resolved when ``message_id`` reaches a final outbound state."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers[message_id].append(future)
        return future

    def unwatch(self, message_id: str, future: asyncio.Future[None]) -> None:
        futures = self._watchers.get(message_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._watchers.pop(message_id, None)

    def _settled(self, message_id: str) -> None:
        for future in self._watchers.pop(message_id, []):
            if not future.done():
                future.set_result(None)

    async def _worker(self, recipient: str) -> None:
        """Deliver ``recipient``'s queue for as long as the node runs.

        Survives any error: it is logged at once and the round is tried again
        after a backoff (a database locked by another process, for instance).
        """
        wake = self._wake[recipient]
        failures = 0
        while True:
            try:
                if self._links[recipient].down_since is not None:
                    await self._probe(recipient)
                else:
                    await self._round(recipient, wake)
                failures = 0
            except Exception as error:
                failures += 1
                delay = self._backoff(failures)
                log.error(
                    "delivery to %s failed (%s); trying again in %.1f s",
                    recipient,
                    one_line(error),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _round(self, recipient: str, wake: asyncio.Event) -> None:
        """Claim what is due and start delivering it; else sleep until something is due."""
        wake.clear()
        flights = self._flights[recipient]
        free = self._limits.delivery_window - len(flights) - self._reserved[recipient]
        held = self._window_bytes(recipient)
        # Bytes this claim may take; with nothing in flight, at least one message.
        room = self._limits.delivery_window_bytes - held
        if held and room <= 0:  # full in bytes
            await self._wait_for_room(recipient, wake, held)
            return
        claimed: list[PendingDelivery] = []
        if free > 0:
            # Cleared before the claim: whatever is queued while it runs sets it again.
            self._backlog.discard(recipient)
            # The places this claim may fill are taken until the claimed messages are
            # started: a send meanwhile must not be given one of them too (the window
            # would overshoot).
            budget = max(room, 0)
            self._reserved[recipient] += free
            self._reserved_bytes[recipient] += budget
            try:
                claimed = await self._committer.submit(
                    functools.partial(
                        outbox.claim_due,
                        recipient=recipient,
                        now=self._clock(),
                        limit=free,
                        max_bytes=budget,
                        always_one=not held,
                        lease=self.lease(),
                    )
                )
                card = await asyncio.to_thread(self._peers.peer, recipient) if claimed else None
                for pending in claimed:
                    self._start(card, pending)
            finally:
                self._reserved[recipient] -= free
                self._reserved_bytes[recipient] -= budget
        if claimed and (len(claimed) == free or self._window_full(recipient)):
            self._backlog.add(recipient)  # there may be more
            return
        if not claimed and free > 0 and held and await self._due_now(recipient):
            # Due, but too large to go beside the envelopes in flight.
            await self._wait_for_room(recipient, wake, held)
            return
        # Nothing more is due now (or the window is full): sleep until the first message
        # queued for later is due, or something wakes the worker.
        await self._sleep_until_due(recipient, wake, looked=free > 0)

    async def _wait_for_room(self, recipient: str, wake: asyncio.Event, held: int) -> None:
        """Until an envelope in flight lands, or a place promised to a send is given back
        (``_landed`` and ``hand_over`` wake the worker of a peer in the backlog): not a
        poll of the queue over and over meanwhile. ``held`` is what the window held when
        the caller looked; a landing since then means there may be room already."""
        self._backlog.add(recipient)
        if self._window_bytes(recipient) < held:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), QUEUE_POLL_SECONDS)

    def _window_bytes(self, recipient: str) -> int:
        """Envelope bytes in flight to ``recipient``, or promised a place."""
        return self._flight_bytes[recipient] + self._reserved_bytes[recipient]

    def _window_full(self, recipient: str) -> bool:
        return self._window_bytes(recipient) >= self._limits.delivery_window_bytes

    def _start(self, card: PeerCard | None, pending: PendingDelivery) -> None:
        """Deliver ``pending`` (claimed, SENT) in a task of its own."""
        flights = self._flights[pending.recipient]
        task = asyncio.create_task(self._deliver(card, pending))
        flights.add(task)
        size = len(pending.envelope)
        self._flight_bytes[pending.recipient] += size
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        task.add_done_callback(functools.partial(self._landed, pending.recipient, size))

    def _landed(self, recipient: str, size: int, task: asyncio.Task[None]) -> None:
        """An attempt ended: its place in the window is free for the queue, if any waits."""
        flights = self._flights[recipient]
        flights.discard(task)
        self._flight_bytes[recipient] -= size
        if recipient in self._backlog:
            self._wake[recipient].set()

    async def _due_now(self, recipient: str) -> bool:
        now = self._clock()
        due = await asyncio.to_thread(self._read, outbox.next_due_at, recipient, now)
        return due is not None and due <= now

    async def _sleep_until_due(self, recipient: str, wake: asyncio.Event, *, looked: bool) -> None:
        """Until something wakes the worker, or a queued message is due. Another replica
        of the node may queue for this peer (and stop before it sends): the shared queue
        is read now and then, and a claim is made only if something is due."""
        look = looked or not self._flights[recipient]
        while True:
            timeout = QUEUE_POLL_SECONDS
            if look:
                due = await asyncio.to_thread(
                    self._read, outbox.next_due_at, recipient, self._clock()
                )
                if due is not None:
                    wait = (due - self._clock()).total_seconds()
                    if wait <= 0:
                        self._backlog.add(recipient)  # it goes before new sends
                        return
                    timeout = min(wait, QUEUE_POLL_SECONDS)
            try:
                await asyncio.wait_for(wake.wait(), timeout)
                return
            except TimeoutError:
                look = True

    def _backoff(self, failures: int) -> float:
        """Exponential backoff with jitter after ``failures`` failures in a row."""
        growth: float = 2.0 ** max(0, failures - 1)
        backoff = min(self._limits.retry_base_seconds * growth, self._limits.retry_max_seconds)
        return backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    async def _probe(self, recipient: str) -> None:
        """One probe of a peer that is down, after a backoff; releases its queue if it answers."""
        link = self._links[recipient]
        if not link.audited:
            error, now = link.error, self._clock()
            await self._committer.submit(
                lambda session: outbox.record_link(
                    session, recipient, reachable=False, at=now, detail=error
                )
            )
            link.audited = True
            log.warning("%s is unreachable: %s", recipient, error)
        if recipient in self._probe_now:
            self._probe_now.discard(recipient)
        else:
            wake = self._wake[recipient]
            wake.clear()
            with contextlib.suppress(TimeoutError):  # a retry request cuts the wait short
                await asyncio.wait_for(self._retry_wait(recipient), self._backoff(link.probes + 1))
        card = await asyncio.to_thread(self._peers.peer, recipient)
        if card is not None:
            try:
                await health_pb2_grpc.HealthStub(self._channel(card)).Check(
                    health_pb2.HealthCheckRequest(service=PEER_SERVICE),
                    timeout=self._limits.delivery_timeout_seconds,
                )
            except grpc.aio.AioRpcError as error:
                link.probes += 1
                link.error = describe_transport_error(error)
                # The next probe on a fresh channel: one that failed to connect waits out
                # gRPC's own reconnect backoff (up to two minutes) and fails fast meanwhile.
                self._drop_channel(card.agency_id)
                log.info("%s is still unreachable (probe %d)", recipient, link.probes)
                return
        # It answers (or is no longer pinned: its queue is held by the outbox anyway).
        now = self._clock()
        down_since = link.down_since or now
        await self._committer.submit(
            lambda session: outbox.release_queue(session, recipient, now=now, down_since=down_since)
        )
        # The probe count stays until a delivery succeeds: a peer that answers health but
        # fails every delivery (its storage is down) is probed ever more slowly, not
        # released into a retry storm every second.
        self._links[recipient] = _Link(probes=link.probes + 1)
        log.info("%s is reachable again; its queue is released", recipient)
        self._backlog.add(recipient)
        self._wake[recipient].set()

    async def _retry_wait(self, recipient: str) -> None:
        """Returns when an operator asks for a retry of ``recipient``'s queue."""
        wake = self._wake[recipient]
        while recipient not in self._probe_now:
            await wake.wait()
            wake.clear()
        self._probe_now.discard(recipient)

    def _link_failed(self, recipient: str, error: str) -> None:
        link = self._links[recipient]
        if link.down_since is None:
            link.down_since = self._clock()
            link.error = error
            link.audited = False
            self._drop_channel(recipient)  # probes start on a fresh channel (see _probe)
        self._backlog.add(recipient)
        self._wake[recipient].set()

    def _count_timeout(self, agency_id: str, error: grpc.aio.AioRpcError) -> None:
        """Replace a channel whose calls keep timing out (a connection frozen unnoticed)."""
        link = self._links[agency_id]
        if error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        link.timeouts += 1
        if link.timeouts >= CHANNEL_TIMEOUTS:
            link.timeouts = 0
            log.warning("replacing the channel to %s: its calls keep timing out", agency_id)
            self._drop_channel(agency_id)

    def _drop_channel(self, agency_id: str) -> None:
        """Forget the channel to ``agency_id`` (the next call opens a new one); the old one
        closes once its calls are done."""
        known = self._channels.pop(agency_id, None)
        if known is not None:
            self._retire_channel(known[1])

    async def _deliver(self, card: PeerCard | None, pending: PendingDelivery) -> None:
        try:
            outcome = await self._attempt(card, pending)
        except Exception as error:  # a check that broke: the message is not at fault
            log.error("delivering %s failed: %s", pending.message_id, type(error).__name__)
            outcome = self._retry(pending, f"internal error: {type(error).__name__}")
        await self._settle(outcome)
        if outcome.state is MessageState.QUEUED:
            self._backlog.add(pending.recipient)  # due again, now or after its backoff
        if outcome.state in FINAL_OUTBOUND_STATES:
            log.info(
                "%s to %s: %s%s",
                pending.message_id,
                pending.recipient,
                outcome.state.value,
                f" ({outcome.reason})" if outcome.reason else "",
            )
            self._settled(pending.message_id)

    async def _settle(self, outcome: DeliveryOutcome) -> None:
        """Record ``outcome``; retried until it is recorded (a receipt is never dropped).

        If the node stops first, the message is still SENT and goes back to the
        queue at start: the receiver answers the redelivery with its original receipt.
        """
        failures = 0
        while True:
            try:
                await self._committer.submit(lambda session: outbox.settle(session, outcome))
                return
            except Exception as error:
                failures += 1
                delay = self._backoff(failures)
                log.error(
                    "recording the outcome of %s failed (%s); trying again in %.1f s",
                    outcome.pending.message_id,
                    one_line(error),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, card: PeerCard | None, pending: PendingDelivery) -> DeliveryOutcome:
        if card is None:
            return self._retry(pending, "recipient is no longer a pinned peer")
        try:
            response = await self.stub(card).Deliver(
                peer_pb2.DeliverRequest(envelope=pending.envelope),
                timeout=self._limits.delivery_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            described = describe_transport_error(error)
            self._count_timeout(card.agency_id, error)
            if error.code() in _LINK_ERRORS:
                self._link_failed(card.agency_id, described)
                # Not this message's fault: due again as soon as the peer answers.
                return self._retry(pending, f"transport: {described}", backoff=False)
            return self._retry(pending, f"transport: {described}")
        link = self._links[card.agency_id]
        link.timeouts = 0
        link.probes = 0  # it answered a delivery: the next outage backs off from the start
        now = self._clock()
        try:
            receipt = verify_receipt(
                response.receipt,
                issuer=card,
                previous=self._peers.trust.previous(card.agency_id),
                message_id=pending.message_id,
                sender=self._keys.current.agency_id,
                envelope_sha256=bytes.fromhex(pending.envelope_sha256),
            )
        except ReceiptError as error:
            return self._retry(pending, str(error), signed_receipt=response.receipt)
        state, status = _RECEIPT_STATES[receipt.status]
        return DeliveryOutcome(
            pending=pending,
            state=state,
            at=now,
            signed_receipt=response.receipt,
            receipt_status=status,
            reason=reason_name(receipt.reason) if receipt.reason else None,
        )

    def _retry(
        self,
        pending: PendingDelivery,
        error: str,
        *,
        signed_receipt: bytes | None = None,
        backoff: bool = True,
    ) -> DeliveryOutcome:
        now = self._clock()
        delay = self._backoff(pending.attempts) if backoff else 0.0
        return DeliveryOutcome(
            pending=pending,
            state=MessageState.QUEUED,
            at=now,
            signed_receipt=signed_receipt,
            retry_at=now + dt.timedelta(seconds=delay),
            error=error,
        )

    def stub(self, card: PeerCard) -> peer_pb2_grpc.PeerExchangeAsyncStub:
        """A stub on the channel to ``card``'s node (the one deliveries use)."""
        return peer_pb2_grpc.PeerExchangeStub(self._channel(card))  # async stub, aio channel

    def _channel(self, card: PeerCard) -> grpc.aio.Channel:
        """The channel to ``card``'s node.

        The channel trusts the peer's pinned certificate (and the one it replaced,
        in its grace period: the peer presents it until all its peers know the
        new one) and presents ours that the peer pins. When any of that changes,
        a new channel replaces the old one, which closes once its calls are done.
        """
        previous = self._peers.trust.previous(card.agency_id)
        ours = self._keys.for_peer(card.agency_id).tls
        key = (
            card.tls_fingerprint,
            previous.tls_fingerprint if previous else "",
            card.endpoint,
            ours.fingerprint,
        )
        known = self._channels.get(card.agency_id)
        channel = known[1] if known and known[0] == key else None
        if channel is None:
            if known is not None:
                self._retire_channel(known[1])
            channel = self.open_channel(card)
            self._channels[card.agency_id] = (key, channel)
        return channel

    def open_channel(self, card: PeerCard) -> grpc.aio.Channel:
        """A new channel to ``card``'s node, for the caller to close: calls that must not
        share the deliveries' connection (and its reconnect backoff when they fail)."""
        previous = self._peers.trust.previous(card.agency_id)
        ours = self._keys.for_peer(card.agency_id).tls
        roots = [card.tls_certificate, *([previous.tls_certificate] if previous else [])]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=b"".join(der_to_pem(der) for der in roots),
            private_key=ours.key_pem(),
            certificate_chain=ours.certificate_pem(),
        )
        size = self._limits.max_grpc_message_bytes
        return grpc.aio.secure_channel(
            card.endpoint,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", card.tls_name),
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                # A connection that froze without closing is found by its unanswered
                # pings and dropped; the next call opens a new one.
                ("grpc.keepalive_time_ms", int(self._limits.keepalive_seconds * 1000)),
                (
                    "grpc.keepalive_timeout_ms",
                    int(self._limits.keepalive_timeout_seconds * 1000),
                ),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )

    def _retire_channel(self, channel: grpc.aio.Channel) -> None:
        grace = self._limits.delivery_timeout_seconds
        task = asyncio.create_task(channel.close(grace=grace), name="close-replaced-channel")
        self._retired.add(channel)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        task.add_done_callback(lambda _task: self._retired.discard(channel))
        task.add_done_callback(_log_failure)

    def _read(self, query: Callable[..., T], *args: object) -> T:
        with self._store.read() as session:
            return query(session, *args)

    async def _sweep_expired(self) -> None:
        """Mark expired envelopes every second, queue again the claims of a replica whose
        lease ran out, and every few seconds start a worker for each peer that has
        messages queued (by another replica, perhaps). Survives any error (logged at
        once)."""
        polled = 0.0
        while True:
            try:
                now = self._clock()
                # Reads first: a write transaction is taken only when there is work.
                if await asyncio.to_thread(self._read, outbox.any_expired, now):
                    expired = await self._committer.submit(
                        functools.partial(outbox.expire_due, now=now)
                    )
                    for message_id in expired:
                        self._settled(message_id)
                if await asyncio.to_thread(self._read, outbox.any_lease_run_out, now):
                    released = await self._committer.submit(
                        functools.partial(outbox.requeue_run_out, now=now)
                    )
                    for recipient in released:
                        log.warning("claims on messages to %s ran out; queued again", recipient)
                        self.notify(recipient)
                polled += EXPIRY_SWEEP_SECONDS
                if polled >= QUEUE_POLL_SECONDS:
                    polled = 0.0
                    waiting = await asyncio.to_thread(self._read, outbox.recipients_with_queue)
                    for recipient in waiting:
                        if recipient not in self._workers:
                            self.notify(recipient)
            except Exception as error:
                log.error(
                    "the expiry sweep failed (%s); trying again in %g s",
                    one_line(error),
                    EXPIRY_SWEEP_SECONDS,
                )
            await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
