"""What the local API does: send notices, list them, read one, follow its timeline."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from dataclasses import dataclass

from liaison.keys.envelope import seal_content
from liaison.keys.identity import NodeIdentity
from liaison.keys.notice import CASE_NOTICE_CONTENT_TYPE, notice_problems
from liaison.server.committer import GroupCommitter
from liaison.server.config import Limits
from liaison.server.delivery import Delivery
from liaison.server.errors import NotFound, RequestError
from liaison.server.exchange import Clock, utc_now
from liaison.server.peers import PeerDirectory
from liaison.server.store import outbox
from liaison.server.store.models import (
    FINAL_OUTBOUND_STATES,
    AuditEvent,
    Direction,
    Message,
    MessageState,
    Receipt,
)
from liaison.server.store.records import NoticeRecord
from liaison.server.store.store import Store
from liaison.v1 import notice_pb2


@dataclass(frozen=True)
class SendOutcome:
    message_id: str
    state: MessageState


@dataclass(frozen=True)
class MessageView:
    message: Message
    receipt: Receipt | None
    timeline: list[AuditEvent]


@dataclass
class Notices:
    identity: NodeIdentity
    peers: PeerDirectory
    store: Store
    committer: GroupCommitter
    delivery: Delivery
    limits: Limits
    clock: Clock = utc_now

    async def send(
        self,
        recipient: str,
        notice: notice_pb2.CaseNotice,
        *,
        actor: str,
        ttl_seconds: int = 0,
        wait_seconds: int = 0,
    ) -> SendOutcome:
        """Seal ``notice`` to ``recipient`` and queue it; optionally wait for a final state.

        Raises ``RequestError`` for an unknown recipient or an invalid notice.
        """
        card = await asyncio.to_thread(self.peers.peer, recipient)
        if card is None:
            raise RequestError(f"{recipient} is not a pinned peer; add its card first")
        if recipient == self.identity.agency_id:
            raise RequestError("a node does not send notices to itself")
        now = self.clock()
        notice = _complete(notice, self.identity.agency_id, now)
        if notice.originator.agency_id != self.identity.agency_id:
            raise RequestError("the originator must be this node's agency")
        problems = notice_problems(notice)
        if problems:
            raise RequestError("invalid notice: " + "; ".join(problems))
        ttl = ttl_seconds or self.limits.default_ttl_seconds
        if ttl > self.limits.max_lifetime_days * 86400:
            raise RequestError(f"ttl exceeds the limit of {self.limits.max_lifetime_days} days")
        sealed = await asyncio.to_thread(
            seal_content,
            notice.SerializeToString(),
            content_type=CASE_NOTICE_CONTENT_TYPE,
            sender=self.identity,
            recipient=card,
            ttl=dt.timedelta(seconds=ttl),
            now=now,
        )
        record = NoticeRecord.of(
            sealed.header,
            notice,
            envelope=sealed.envelope,
            envelope_sha256=sealed.envelope_sha256,
            content=sealed.content,
        )
        settled = self.delivery.watch(sealed.message_id)
        try:
            await self.committer.submit(lambda session: outbox.queue(session, record, actor=actor))
            self.delivery.notify(recipient)
            wait = min(wait_seconds, self.limits.max_wait_seconds)
            if not wait:
                return SendOutcome(sealed.message_id, MessageState.QUEUED)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(settled), wait)
        finally:
            self.delivery.unwatch(sealed.message_id, settled)
        state = await asyncio.to_thread(self.store.state, sealed.message_id)
        return SendOutcome(sealed.message_id, MessageState(state))

    async def status(self, message_id: str, *, wait_seconds: int = 0) -> MessageView:
        """Like ``get``; with ``wait_seconds``, first wait for a final outbound state."""
        settled = self.delivery.watch(message_id)
        try:
            view = await self.get(message_id)
            wait = min(wait_seconds, self.limits.max_wait_seconds)
            pending = view.message.state not in {s.value for s in FINAL_OUTBOUND_STATES}
            if wait and pending and view.message.direction == Direction.OUTBOUND.value:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(settled), wait)
                view = await self.get(message_id)
        finally:
            self.delivery.unwatch(message_id, settled)
        return view

    async def list(self, direction: Direction | None, limit: int) -> list[Message]:
        limit = min(limit or self.limits.list_default, self.limits.list_max)
        return await asyncio.to_thread(self.store.messages, direction, limit)

    async def get(self, message_id: str) -> MessageView:
        """Raises ``NotFound``."""
        found = await asyncio.to_thread(self.store.message, message_id)
        if found is None:
            raise NotFound(f"no message {message_id}")
        message, receipt = found
        timeline = await asyncio.to_thread(self.store.timeline, message)
        return MessageView(message, receipt, timeline)


def _complete(
    notice: notice_pb2.CaseNotice, agency_id: str, now: dt.datetime
) -> notice_pb2.CaseNotice:
    """A copy with the originator agency and creation time filled in where unset."""
    completed = notice_pb2.CaseNotice()
    completed.CopyFrom(notice)
    if not completed.originator.agency_id:
        completed.originator.agency_id = agency_id
    if not completed.HasField("created_at"):
        completed.created_at.FromDatetime(now.replace(microsecond=0))
    return completed
