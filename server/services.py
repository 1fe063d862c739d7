"""Thin gRPC servicers: read the request, identify the caller, call one function,
map the result and the errors to the wire."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from liaison.keys.card import PeerCard
from liaison.keys.storage import StoredContentError
from liaison.keys.times import is_valid_timestamp
from liaison.server.access import AccessControl, certificate_sha256, sees_content
from liaison.server.auditing import AuditReader, AuditScope
from liaison.server.checkpoints import Checkpointer, ProofDenied, Witness
from liaison.server.errors import NotFound, RequestError, Withheld
from liaison.server.exchange import Receiver
from liaison.server.gate import Limit, PeerGate, Refused
from liaison.server.notices import Notices, RecipientOutcome, SendOutcome
from liaison.server.store.models import AuditEvent, Direction, MessageState
from liaison.server.store.records import MessageSummaryRow
from liaison.v1 import envelope_pb2, node_pb2, node_pb2_grpc, notice_pb2, peer_pb2

_STATES = {
    state: node_pb2.MessageState.Value(f"MESSAGE_STATE_{state.name}") for state in MessageState
}
_DIRECTIONS = {
    Direction.INBOUND: node_pb2.DIRECTION_INBOUND,
    Direction.OUTBOUND: node_pb2.DIRECTION_OUTBOUND,
}


Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# GetAttachment streams an attachment in parts of this size.
ATTACHMENT_CHUNK_BYTES = 1024 * 1024


class PeerExchangeServicer:
    """``PeerExchange`` for pinned peers, behind the ``PeerGate``.

    ``Deliver`` is unary on the wire, but is served as a stream-unary method
    so that the gate admits the call before the request is read: a refused or
    waiting call costs no memory for its envelope. Its request arrives as raw
    bytes, parsed here: bytes that are not a ``DeliverRequest`` are answered
    like any malformed envelope, with a signed receipt (PROTOCOL.md 9.1).
    """

    def __init__(
        self,
        receiver: Receiver,
        gate: PeerGate,
        witness: Witness,
        prove: Callable[[str, peer_pb2.InclusionRequest], Awaitable[object]],
    ) -> None:
        self._receiver = receiver
        self._gate = gate
        self._witness = witness
        self._prove = prove

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        service = peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"].full_name
        methods: dict[str, tuple[Any, Callable[[Any], bytes]]] = {
            "Deliver": (self.Deliver, peer_pb2.DeliverResponse.SerializeToString),
            "Witness": (self.Witness, peer_pb2.WitnessResponse.SerializeToString),
            "ProveInclusion": (self.ProveInclusion, peer_pb2.InclusionResponse.SerializeToString),
        }
        return grpc.method_handlers_generic_handler(
            service,
            {
                name: grpc.stream_unary_rpc_method_handler(
                    method,
                    request_deserializer=None,
                    response_serializer=serialize,
                )
                for name, (method, serialize) in methods.items()
            },
        )

    async def Deliver(self, _requests: object, context: Context) -> peer_pb2.DeliverResponse:
        async def deliver(peer: PeerCard, request: list[bytes]) -> peer_pb2.DeliverResponse:
            raw = request.pop()  # the only reference: a 16 MiB request is not kept twice
            try:
                envelope = peer_pb2.DeliverRequest.FromString(raw).envelope
            except DecodeError:
                receipt = await self._receiver.refuse_unparsed(raw, peer.agency_id)
            else:
                del raw  # the copies of a 16 MiB envelope need not live on
                receipt = await self._receiver.deliver(envelope, peer.agency_id)
                del envelope  # before the budget it was read under is released
            return peer_pb2.DeliverResponse(receipt=receipt)

        return await self._admitted(context, "DeliverRequest", deliver)

    async def Witness(self, _requests: object, context: Context) -> peer_pb2.WitnessResponse:
        async def witness(peer: PeerCard, request: list[bytes]) -> peer_pb2.WitnessResponse:
            return await self._witness.witness(peer.agency_id, request.pop())

        return await self._admitted(context, "WitnessRequest", witness)

    async def ProveInclusion(
        self, _requests: object, context: Context
    ) -> peer_pb2.InclusionResponse:
        async def prove(peer: PeerCard, raw: list[bytes]) -> peer_pb2.InclusionResponse:
            try:
                request = peer_pb2.InclusionRequest.FromString(raw.pop())
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an InclusionRequest")
            answer = await self._prove(peer.agency_id, request)
            if isinstance(answer, ProofDenied):
                await context.abort(answer.code, answer.message)
            assert isinstance(answer, peer_pb2.InclusionResponse)
            return answer

        return await self._admitted(context, "InclusionRequest", prove)

    async def _admitted(
        self,
        context: Context,
        what: str,
        serve: Callable[[PeerCard, list[bytes]], Awaitable[T]],
    ) -> T:
        """Identify the pinned peer, admit the call through the gate, read the request's
        bytes, and ``serve`` them (in a list it takes them out of, so that no frame here
        keeps them alive); a refusal is the gRPC error the gate names."""
        peer = self._gate.identify(certificate_sha256(context))
        try:
            if peer is None:
                raise await self._gate.refuse(
                    Limit.UNPINNED_CERTIFICATE,
                    None,
                    "the client certificate is not a pinned peer's certificate",
                )
            async with self._gate.admit(peer, context.peer()) as admitted:
                raw = await admitted.read(context.read, _request_size)
                if not isinstance(raw, bytes):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no {what} sent")
                request = [raw]
                del raw
                return await serve(peer, request)
        except Refused as refused:
            code = (
                grpc.StatusCode.UNAUTHENTICATED
                if refused.limit is Limit.UNPINNED_CERTIFICATE
                else grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            await context.abort(code, refused.message)
            raise  # abort raises; never reached


def _request_size(request: object) -> int:
    return len(request) if isinstance(request, bytes) else 0


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    """The local API. Every request is checked by ``Notices``; a ``RequestError``
    is ``INVALID_ARGUMENT`` and ``NotFound`` is ``NOT_FOUND`` (the error
    interceptor maps everything else)."""

    def __init__(self, notices: Notices, checkpointer: Checkpointer, access: AccessControl) -> None:
        self._notices = notices
        self._checkpointer = checkpointer
        self._access = access
        self._audit = AuditReader(notices.store)

    async def SendNotice(
        self, request: node_pb2.SendNoticeRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "SendNotice")
        sent = await _answer(
            context,
            self._notices.send(
                list(request.recipients) or request.recipient,
                request.notice,
                actor=caller.name,
                ttl_seconds=request.ttl_seconds,
                wait_seconds=request.wait_seconds,
                idempotency_key=request.idempotency_key,
            ),
        )
        return _sent(sent)

    async def Acknowledge(
        self, request: node_pb2.AcknowledgeRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "Acknowledge")
        sent = await _answer(
            context,
            self._notices.acknowledge(
                request.message_id,
                request.status,
                request.comment,
                actor=caller.name,
                idempotency_key=request.idempotency_key,
            ),
        )
        return _sent(sent)

    async def Reply(
        self, request: node_pb2.ReplyRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "Reply")
        sent = await _answer(
            context,
            self._notices.reply(
                request.message_id,
                request.notice,
                actor=caller.name,
                ttl_seconds=request.ttl_seconds,
                idempotency_key=request.idempotency_key,
            ),
        )
        return _sent(sent)

    async def Forward(
        self, request: node_pb2.ForwardRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "Forward")
        sent = await _answer(
            context,
            self._notices.forward(
                request.message_id,
                request.recipient,
                actor=caller.name,
                readers=list(request.readers),
                comment=request.comment,
                ttl_seconds=request.ttl_seconds,
                idempotency_key=request.idempotency_key,
            ),
        )
        return _sent(sent)

    async def Cancel(
        self, request: node_pb2.GetMessageRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "Cancel")
        done = await _answer(context, self._notices.cancel(request.message_id, actor=caller.name))
        return _sent(done)

    async def Retry(
        self, request: node_pb2.GetMessageRequest, context: Context
    ) -> node_pb2.SendNoticeResponse:
        caller = await self._access.require(context, "Retry")
        done = await _answer(context, self._notices.retry(request.message_id, actor=caller.name))
        return _sent(done)

    async def Watch(
        self, request: node_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[node_pb2.WatchEvent]:
        await self._access.require(context, "Watch")
        events = self._notices.watch(request.after, list(request.events))
        try:
            async for event in events:
                # A stream lasts; the credential may not: revoked or expired, it ends here.
                await self._access.require(context, "Watch")
                yield node_pb2.WatchEvent(
                    seq=event.seq,
                    at=_timestamp(event.at),
                    event=event.event,
                    message_id=event.message_id or "",
                    peer=event.peer or "",
                    detail=event.detail or "",
                    reason=event.reason or "",
                )
        except RequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))

    async def SignCheckpoint(
        self, request: node_pb2.SignCheckpointRequest, context: Context
    ) -> node_pb2.CheckpointResponse:
        await self._access.require(context, "SignCheckpoint")
        newest = await self._checkpointer.round(force=True)
        if newest is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the audit log is empty")
        assert newest is not None
        return node_pb2.CheckpointResponse(
            size=newest.size,
            root=newest.root,
            note=newest.cosigned,
            cosigners=newest.cosigners,
            signed_at=_timestamp(newest.signed_at),
        )

    async def ListAuditEvents(
        self, request: node_pb2.ListAuditEventsRequest, context: Context
    ) -> node_pb2.ListAuditEventsResponse:
        await self._access.require(context, "ListAuditEvents")

        async def page() -> tuple[list[AuditEvent], bool]:
            scope = AuditScope(
                message_ids=frozenset({request.message_id}) if request.message_id else None,
                peer=request.peer or None,
                actor=request.actor or None,
                events=frozenset(request.events),
                since=_when(request, "since"),
                until=_when(request, "until"),
            )
            return await self._audit.page(scope, after=request.after, limit=request.limit)

        rows, more = await _answer(context, page())
        return node_pb2.ListAuditEventsResponse(
            events=[
                node_pb2.AuditRecord(
                    seq=event.seq,
                    at=_timestamp(event.at),
                    event=event.event,
                    actor=event.actor or "",
                    peer=event.peer or "",
                    message_id=event.message_id or "",
                    envelope_sha256=event.envelope_sha256 or "",
                    reason=event.reason or "",
                    detail=event.detail or "",
                )
                for event in rows
            ],
            more=more,
        )

    async def GetThread(
        self, request: node_pb2.GetMessageRequest, context: Context
    ) -> node_pb2.ThreadResponse:
        caller = await self._access.require(context, "GetThread")
        rows = await _answer(context, self._notices.thread(request.message_id))
        shown = sees_content(caller)
        return node_pb2.ThreadResponse(messages=[_summary(row, shown) for row in rows])

    async def ListMessages(
        self, request: node_pb2.ListMessagesRequest, context: Context
    ) -> node_pb2.ListMessagesResponse:
        caller = await self._access.require(context, "ListMessages")
        page = await _answer(context, self._notices.list(request, subjects=sees_content(caller)))
        shown = sees_content(caller)
        return node_pb2.ListMessagesResponse(
            messages=[_summary(row, shown) for row in page.rows], next_cursor=page.next_cursor
        )

    async def GetMessage(
        self, request: node_pb2.GetMessageRequest, context: Context
    ) -> node_pb2.MessageDetail:
        caller = await self._access.require(context, "GetMessage")
        view = await _answer(context, self._notices.get(request.message_id, opened_by=caller.name))
        # A destroyed content leaves `notice` unset; the timeline ends in content-destroyed.
        detail = node_pb2.MessageDetail(
            summary=_summary(view.summary),
            notice=view.notice,
            envelope_sha256=view.message.envelope_sha256,
            timeline=[_event(e) for e in view.timeline],
        )
        if view.notice is not None:
            detail.attachment_sizes.extend(len(a.content) for a in view.notice.attachments)
            if request.without_attachment_content:
                for attachment in detail.notice.attachments:
                    attachment.ClearField("content")
        if view.forwarded_from is not None:
            detail.forwarded_from.CopyFrom(view.forwarded_from)
        if view.receipt is not None:
            signed = envelope_pb2.SignedReceipt.FromString(view.receipt.signed_receipt)
            detail.receipt.ParseFromString(signed.receipt)
        if view.notice is not None:
            await _answer(context, self._notices.opened(view.message, caller.name))
        return detail

    async def GetAttachment(
        self, request: node_pb2.GetAttachmentRequest, context: Context
    ) -> AsyncIterator[node_pb2.AttachmentChunk]:
        caller = await self._access.require(context, "GetAttachment")
        view = await _answer(context, self._notices.get(request.message_id, opened_by=caller.name))
        attachments = view.notice.attachments if view.notice is not None else []
        if not 1 <= request.index <= len(attachments):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"message {view.message.message_id} has no attachment {request.index} "
                f"(it has {len(attachments)})",
            )
        attachment = attachments[request.index - 1]
        await _answer(
            context,
            self._notices.opened(view.message, caller.name, what=f"attachment {request.index}"),
        )
        content = attachment.content
        yield node_pb2.AttachmentChunk(
            name=attachment.name,
            media_type=attachment.media_type,
            size=len(content),
            sha256=attachment.sha256,
            data=content[:ATTACHMENT_CHUNK_BYTES],
        )
        for start in range(ATTACHMENT_CHUNK_BYTES, len(content), ATTACHMENT_CHUNK_BYTES):
            yield node_pb2.AttachmentChunk(data=content[start : start + ATTACHMENT_CHUNK_BYTES])

    async def GetStatus(
        self, request: node_pb2.GetStatusRequest, context: Context
    ) -> node_pb2.MessageStatus:
        await self._access.require(context, "GetStatus")
        view = await _answer(
            context, self._notices.status(request.message_id, wait_seconds=request.wait_seconds)
        )
        group = await _answer(context, self._notices.recipients(request.message_id))
        return node_pb2.MessageStatus(
            message_id=view.message.message_id,
            state=_STATES[MessageState(view.message.state)],
            timeline=[_event(e) for e in view.timeline],
            reason=view.message.failure_reason or "",
            peer=view.summary.peer,
            recipients=[_recipient_state(one) for one in group],
        )


def _sent(outcome: SendOutcome) -> node_pb2.SendNoticeResponse:
    return node_pb2.SendNoticeResponse(
        message_id=outcome.message_id,
        state=_STATES[outcome.state],
        reason=outcome.reason,
        notice_id=outcome.notice_id,
        recipients=[_recipient_state(one) for one in outcome.recipients],
    )


def _recipient_state(one: RecipientOutcome) -> node_pb2.RecipientState:
    return node_pb2.RecipientState(
        recipient=one.recipient,
        message_id=one.message_id,
        state=_STATES[one.state],
        reason=one.reason,
    )


async def _answer(context: Context, work: Awaitable[T]) -> T:
    """The result of ``work``, or the call aborted with the status its error maps to."""
    try:
        return await work
    except RequestError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except NotFound as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except Withheld as error:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
    except StoredContentError as error:
        await context.abort(grpc.StatusCode.DATA_LOSS, str(error))
    raise AssertionError("abort raises")  # for the type checker


def _when(request: node_pb2.ListAuditEventsRequest, name: str) -> dt.datetime | None:
    """A filter's time, if given; a Timestamp out of range is the caller's error."""
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    stamp = getattr(request, name)
    if not is_valid_timestamp(stamp):
        raise RequestError(f"{name} is not a valid Timestamp")
    return stamp.ToDatetime(tzinfo=dt.UTC)  # type: ignore[no-any-return]


def _timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _summary(row: MessageSummaryRow, content: bool = True) -> node_pb2.MessageSummary:
    """The wire summary; without ``content`` (an auditor's), the subject stays out."""
    return node_pb2.MessageSummary(
        message_id=row.message_id,
        direction=_DIRECTIONS[Direction(row.direction)],
        peer=row.peer,
        state=_STATES[MessageState(row.state)],
        category=row.category,  # type: ignore[arg-type]
        priority=row.priority,  # type: ignore[arg-type]
        handling=row.handling,  # type: ignore[arg-type]
        case_reference=row.case_reference,
        # TLP:RED subjects stay out of every listing: the body is for its readers alone.
        subject=row.subject if content and row.handling != notice_pb2.TLP_RED else "",
        created_at=_timestamp(row.created_at),
        updated_at=_timestamp(row.updated_at),
        content_type=row.content_type,
        refers_to=row.refers_to or "",
    )


def _event(event: AuditEvent) -> node_pb2.TimelineEvent:
    parts = [p for p in (event.reason, event.detail) if p]
    return node_pb2.TimelineEvent(
        at=_timestamp(event.at), event=event.event, detail=" ".join(parts)
    )
