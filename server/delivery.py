"""Delivering queued envelopes to peers: a pipelined worker per peer.

Each peer's worker keeps up to ``Limits.delivery_window`` deliveries in flight
over one HTTP/2 channel. It claims due messages from the outbox (QUEUED to
SENT, audited), and each completed attempt is settled through the group
committer, so deliveries that finish together share one commit. A transport
error or an unusable receipt puts the message back in the queue with
exponential backoff and jitter, until its envelope expires.
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
from typing import TypeVar

import grpc

from liaison.keys.card import PeerCard
from liaison.keys.certs import der_to_pem
from liaison.keys.envelope import verify_receipt
from liaison.keys.errors import ReceiptError, reason_name
from liaison.server.committer import GroupCommitter
from liaison.server.config import Limits
from liaison.server.exchange import Clock, utc_now
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory
from liaison.server.store import outbox
from liaison.server.store.models import FINAL_OUTBOUND_STATES, MessageState
from liaison.server.store.outbox import DeliveryOutcome, PendingDelivery
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2, peer_pb2, peer_pb2_grpc

log = logging.getLogger(__name__)

_RECEIPT_STATES = {
    envelope_pb2.RECEIPT_STATUS_ACCEPTED: (MessageState.DELIVERED, "accepted"),
    envelope_pb2.RECEIPT_STATUS_DUPLICATE: (MessageState.FAILED, "duplicate"),
    envelope_pb2.RECEIPT_STATUS_REJECTED: (MessageState.FAILED, "rejected"),
}
EXPIRY_SWEEP_SECONDS = 1.0
T = TypeVar("T")


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
    ) -> None:
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
        # Replaced channels, closing once the calls on them have finished.
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Requeue what a previous run left in flight and start a worker per waiting peer."""
        now = self._clock()
        await self._committer.submit(lambda session: outbox.requeue_in_flight(session, now=now))
        recipients = await asyncio.to_thread(self._read, outbox.recipients_with_queue)
        for recipient in recipients:
            self.notify(recipient)
        # A worker holding a revoked peer's queue sleeps until the pinned set changes.
        self._peers.subscribe(functools.partial(self._peers_changed, asyncio.get_running_loop()))
        self._sweeper = asyncio.create_task(self._sweep_expired(), name="expiry-sweeper")

    async def stop(self) -> None:
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
        await asyncio.gather(*self._closing, return_exceptions=True)

    def notify(self, recipient: str) -> None:
        """Something was queued for ``recipient``: make sure its worker runs and looks."""
        worker = self._workers.get(recipient)
        if worker is None or worker.done():
            self._workers[recipient] = asyncio.create_task(
                self._worker(recipient), name=f"delivery-{recipient}"
            )
        self._wake[recipient].set()

    def _peers_changed(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called from the thread that refreshed the peers; the loop may be gone at shutdown.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        for recipient in self._workers:
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
        wake = self._wake[recipient]
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            wake.clear()
            free = self._limits.delivery_window - len(in_flight)
            claimed: list[PendingDelivery] = []
            if free > 0:
                claimed = await self._committer.submit(
                    functools.partial(
                        outbox.claim_due, recipient=recipient, now=self._clock(), limit=free
                    )
                )
            card = await asyncio.to_thread(self._peers.peer, recipient) if claimed else None
            for pending in claimed:
                task = asyncio.create_task(self._deliver(card, pending))
                in_flight.add(task)
                self._in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(self._in_flight.discard)
                task.add_done_callback(lambda _task: wake.set())
            if claimed and len(claimed) == free:
                continue
            await self._sleep_until_due(recipient, wake, busy=bool(in_flight))

    async def _sleep_until_due(self, recipient: str, wake: asyncio.Event, *, busy: bool) -> None:
        timeout: float | None = None
        if not busy:
            due = await asyncio.to_thread(self._read, outbox.next_due_at, recipient, self._clock())
            if due is not None:
                timeout = max(0.0, (due - self._clock()).total_seconds())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout)

    async def _deliver(self, card: PeerCard | None, pending: PendingDelivery) -> None:
        try:
            outcome = await self._attempt(card, pending)
            await self._committer.submit(lambda session: outbox.settle(session, outcome))
        except Exception:
            log.exception("settling delivery of %s failed", pending.message_id)
            return
        if outcome.state in FINAL_OUTBOUND_STATES:
            log.info(
                "%s to %s: %s%s",
                pending.message_id,
                pending.recipient,
                outcome.state.value,
                f" ({outcome.reason})" if outcome.reason else "",
            )
            self._settled(pending.message_id)

    async def _attempt(self, card: PeerCard | None, pending: PendingDelivery) -> DeliveryOutcome:
        if card is None:
            return self._retry(pending, "recipient is no longer a pinned peer")
        try:
            response = await self._stub(card).Deliver(
                peer_pb2.DeliverRequest(envelope=pending.envelope),
                timeout=self._limits.delivery_timeout_seconds,
            )
        except grpc.aio.AioRpcError as error:
            return self._retry(pending, f"transport: {error.code().name}")
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
        self, pending: PendingDelivery, error: str, *, signed_receipt: bytes | None = None
    ) -> DeliveryOutcome:
        now = self._clock()
        backoff = min(
            self._limits.retry_base_seconds * 2 ** (pending.attempts - 1),
            self._limits.retry_max_seconds,
        )
        delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        return DeliveryOutcome(
            pending=pending,
            state=MessageState.QUEUED,
            at=now,
            signed_receipt=signed_receipt,
            retry_at=now + dt.timedelta(seconds=delay),
            error=error,
        )

    def _stub(self, card: PeerCard) -> peer_pb2_grpc.PeerExchangeAsyncStub:
        """A stub on the channel to ``card``'s node.

        The channel trusts the peer's pinned certificate (and the one it replaced,
        in its grace period: the peer presents it until all its peers know the
        new one) and presents ours that the peer pins. When any of that changes,
        a new channel replaces the old one, which closes once its calls are done.
        """
        previous = self._peers.trust.previous(card.agency_id)
        ours = self._keys.for_peer(card.agency_id).tls
        roots = [card.tls_certificate, *([previous.tls_certificate] if previous else [])]
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
            credentials = grpc.ssl_channel_credentials(
                root_certificates=b"".join(der_to_pem(der) for der in roots),
                private_key=ours.key_pem(),
                certificate_chain=ours.certificate_pem(),
            )
            size = self._limits.max_grpc_message_bytes
            channel = grpc.aio.secure_channel(
                card.endpoint,
                credentials,
                options=[
                    ("grpc.ssl_target_name_override", card.tls_name),
                    ("grpc.max_send_message_length", size),
                    ("grpc.max_receive_message_length", size),
                ],
            )
            self._channels[card.agency_id] = (key, channel)
        return peer_pb2_grpc.PeerExchangeStub(channel)  # an async stub for an aio channel

    def _retire_channel(self, channel: grpc.aio.Channel) -> None:
        grace = self._limits.delivery_timeout_seconds
        task = asyncio.create_task(channel.close(grace=grace), name="close-replaced-channel")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _read(self, query: Callable[..., T], *args: object) -> T:
        with self._store.read() as session:
            return query(session, *args)

    async def _sweep_expired(self) -> None:
        while True:
            now = self._clock()
            # A read first: the write transaction is taken only when there is work.
            if await asyncio.to_thread(self._read, outbox.any_expired, now):
                expired = await self._committer.submit(
                    functools.partial(outbox.expire_due, now=now)
                )
                for message_id in expired:
                    self._settled(message_id)
            await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
