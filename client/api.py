"""``LiaisonClient``: how agency systems and the CLI use their own node."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from liaison.client import _common
from liaison.client._common import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_ANSWER_BYTES,
    SEND_RETRIES,
    translate,
)
from liaison.client.attachments import AttachmentError, AttachmentFile
from liaison.client.errors import ClientError, NodeUnavailable
from liaison.client.render import state_name
from liaison.client.types import (
    AckStatus,
    AttachmentInfo,
    Direction,
    MessagePage,
    RecipientResult,
    SendResult,
)
from liaison.keys.credentials import ClientCredential
from liaison.keys.sealed import Passphrase
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2

__all__ = [
    "MAX_ANSWER_BYTES",
    "AttachmentStream",
    "LiaisonClient",
    "MessagePage",
    "RecipientResult",
    "SendResult",
    "state_name",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class LiaisonClient:
    """A connection to one node's local API over mutual TLS (blocking calls).

    Start from the credential ``liaison init`` (or ``liaison users add``) issued::

        from liaison.client import Direction, LiaisonClient, Tlp, build_notice

        with LiaisonClient.from_home("~/.liaison", identity="case-system") as client:
            notice = build_notice(
                case_reference="RABAT-2026-118", subject="False job offers",
                category="human-trafficking", priority="urgent", handling=Tlp.AMBER,
                attachments=["statement.pdf"],
            )
            sent = client.send_notice("DE.BPOL.LO-RABAT", notice, wait_seconds=60)
            print(sent.message_id, sent.state)  # "0194c3e0-... delivered"
            for summary in client.iter_messages(Direction.INBOUND):
                client.save_attachments(summary.message_id, "inbox/")

    The key of the credential opens with ``passphrase`` or ``LIAISON_PASSPHRASE``.
    ``AsyncLiaisonClient`` (``liaison.client.aio``) offers the same methods to
    asyncio code.

    Listings and statuses are the node's protobuf messages; read their enum
    fields through ``liaison.client.types`` (``Tlp(summary.handling)``). Every
    method raises a ``ClientError``: ``Unavailable`` (the node cannot be reached,
    after the retries of a send), ``PermissionDenied`` (this identity's role may
    not), ``NotFound``, ``InvalidNotice``, ``ResourceExhausted`` (too large) or
    ``RequestRejected`` (any other refusal), each with the node's ``code`` and
    ``details``. ``timeout`` bounds each call (an attachment's download included;
    waits add their ``wait_seconds``); ``watch`` runs as long as it is followed.
    """

    def __init__(
        self,
        credential: ClientCredential,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        """Connect (lazily: the first call dials) with ``credential``; ``max_answer_bytes``
        must be at least the node's ``Limits.max_grpc_message_bytes``."""
        self._channel = grpc.secure_channel(
            credential.target,
            _common.channel_credentials(credential),
            options=_common.channel_options(max_answer_bytes),
        )
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        self._target = credential.target
        self._timeout = timeout

    @classmethod
    def from_credential_dir(
        cls,
        folder: str | Path,
        passphrase: Passphrase | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> LiaisonClient:
        """Use a credential folder; its key opens with ``passphrase``.

        Without one, the ``LIAISON_PASSPHRASE`` environment variable is used.
        Raises ``KeyStoreError`` if the folder is incomplete or the key does
        not open.
        """
        return cls(_common.credential_from_dir(folder, passphrase), timeout=timeout)

    @classmethod
    def from_home(
        cls,
        home: str | Path,
        identity: str = "admin",
        passphrase: Passphrase | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> LiaisonClient:
        """Use the credential issued into ``home/credentials/<identity>``, and the address
        and message-size limit in the home's config. Raises ``KeyStoreError`` as
        ``from_credential_dir``."""
        credential, most = _common.credential_from_home(home, identity, passphrase)
        return cls(credential, timeout=timeout, max_answer_bytes=most)

    def __enter__(self) -> LiaisonClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; calls in progress end with ``Unavailable``."""
        self._channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the node's local API accepts connections; ``NodeUnavailable`` if not."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise NodeUnavailable(f"the node's local API did not come up in {timeout:g}s") from None

    def send_notice(
        self,
        recipient: str | Sequence[str],
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        wait_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Seal and queue ``notice`` to one recipient or several (one envelope each, one
        notice id); with ``wait_seconds``, wait for delivery first.

        The call carries an idempotency key (a fresh one unless given) and is retried
        up to ``retries`` times with it, with backoff, when the node is unreachable or
        does not answer in time: a retry after an answer that was lost returns the
        notice queued the first time, never a second copy. Raises ``InvalidNotice``
        for a notice the node refuses (``build_notice`` finds those first),
        ``RequestRejected`` for an unknown recipient, ``ResourceExhausted`` for one
        too large, ``NodeUnavailable`` once the retries are spent.
        """
        request = _common.send_request(
            recipient, notice, ttl_seconds, wait_seconds, idempotency_key
        )
        return self._send(self._stub.SendNotice, request, retries, self._timeout + wait_seconds)

    def acknowledge(
        self,
        message_id: str,
        status: AckStatus | str | int,
        *,
        comment: str = "",
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Acknowledge a received notice to its sender: ``AckStatus.ACKNOWLEDGED``,
        ``ACTION_TAKEN`` or ``DECLINED`` (or its name); returns the acknowledgement
        message. Retried with its idempotency key as ``send_notice``."""
        request = _common.acknowledge_request(message_id, status, comment, idempotency_key)
        return self._send(self._stub.Acknowledge, request, retries, self._timeout)

    def reply(
        self,
        message_id: str,
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Answer a received notice with ``notice`` (what it leaves unset is carried over;
        its handling may only stay or tighten). Retried as ``send_notice``."""
        request = _common.reply_request(message_id, notice, ttl_seconds, idempotency_key)
        return self._send(self._stub.Reply, request, retries, self._timeout)

    def forward(
        self,
        message_id: str,
        to: str,
        *,
        readers: Sequence[str] = (),
        comment: str = "",
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Forward a received case notice to the third agency ``to``, whole and under its
        originator's signature; the originator is told. TLP:AMBER+STRICT and RED go only
        where the originator agreed; a TLP:RED forward names ``readers`` at ``to``.
        Retried with its idempotency key as ``send_notice``; ``RequestRejected`` if the
        handling or the originator's consent does not allow it."""
        request = _common.forward_request(
            message_id,
            to,
            readers=readers,
            comment=comment,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
        )
        return self._send(self._stub.Forward, request, retries, self._timeout)

    def watch(
        self,
        after: int = 0,
        *,
        events: Sequence[str] = (),
        reconnect: bool = True,
    ) -> Iterator[node_pb2.WatchEvent]:
        """New inbound messages and every change of state, as they happen (no polling).

        Each event carries its audit ``seq``; the iterator remembers the last one and,
        when the node was unreachable or restarted, reconnects (with backoff) and
        resumes right after it: no event is lost or repeated. Start from a saved
        ``after`` to resume across runs. With ``reconnect=False`` a broken stream
        raises ``NodeUnavailable``; ``RequestRejected`` for an unknown event kind.
        """
        attempt = 0
        while True:
            request = node_pb2.WatchRequest(after=after, events=list(events))
            try:
                for event in self._stub.Watch(request):
                    after = event.seq
                    attempt = 0
                    yield event
                return
            except grpc.RpcError as error:
                translated = translate(error, self._target)
                if not reconnect or not isinstance(translated, NodeUnavailable):
                    raise translated from None
            time.sleep(_common.backoff_seconds(attempt))
            attempt += 1

    def cancel(self, message_id: str) -> SendResult:
        """Cancel a queued outbound message (``RequestRejected`` if it is not queued)."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return _common.send_result(self._call(self._stub.Cancel, request))

    def retry(self, message_id: str) -> SendResult:
        """Try a queued outbound message now instead of at its next backoff."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return _common.send_result(self._call(self._stub.Retry, request))

    def sign_checkpoint(self) -> node_pb2.CheckpointResponse:
        """Have the node sign a checkpoint of its audit log now and its peers cosign it;
        the newest checkpoint, with the cosignatures the node verified."""
        return self._call(self._stub.SignCheckpoint, node_pb2.SignCheckpointRequest())

    def audit_events(
        self, *, after: int = 0, page_size: int = 0, **filters: Any
    ) -> Iterator[node_pb2.AuditRecord]:
        """Every event of the node's audit trail after seq ``after`` that matches
        ``filters`` (fields of ``ListAuditEventsRequest``: ``events``, ``message_id``,
        ``peer``, ``actor``, ``since``/``until`` Timestamps), page after page, in
        sequence order. For auditors and admins; ``PermissionDenied`` for others."""
        while True:
            request = node_pb2.ListAuditEventsRequest(after=after, limit=page_size, **filters)
            page = self._call(self._stub.ListAuditEvents, request)
            yield from page.events
            if not page.more or not page.events:
                return
            after = page.events[-1].seq

    def thread(self, message_id: str) -> list[node_pb2.MessageSummary]:
        """The notice and its acknowledgements and replies, oldest first."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return list(self._call(self._stub.GetThread, request).messages)

    def list_messages(
        self, direction: Direction | int = Direction.UNSPECIFIED, limit: int = 0, **filters: Any
    ) -> list[node_pb2.MessageSummary]:
        """The first page of messages (see ``list_page`` for the filters)."""
        return self.list_page(direction, limit, **filters).messages

    def list_page(
        self,
        direction: Direction | int = Direction.UNSPECIFIED,
        limit: int = 0,
        *,
        cursor: str = "",
        **filters: Any,
    ) -> MessagePage:
        """One page of message summaries, flash and urgent first, then the newest.

        ``filters`` are fields of ``ListMessagesRequest``: ``states`` (a list of
        ``MessageState``), ``peer``, ``case_reference``, ``category``, ``handling``,
        ``priority``, ``since``/``until`` (Timestamps), ``text``, ``newest_first``.
        ``next_cursor`` of the page is empty when nothing more matches. A summary
        never carries a notice's body or attachments. ``UsageError`` for a filter
        that is not a field, ``RequestRejected`` for a value the node refuses.
        """
        request = _common.list_request(direction, limit, cursor, filters)
        response = self._call(self._stub.ListMessages, request)
        return MessagePage(list(response.messages), response.next_cursor)

    def iter_messages(
        self,
        direction: Direction | int = Direction.UNSPECIFIED,
        *,
        page_size: int = 0,
        **filters: Any,
    ) -> Iterator[node_pb2.MessageSummary]:
        """Every matching message, page after page (filters as ``list_page``)."""
        cursor = ""
        while True:
            page = self.list_page(direction, page_size, cursor=cursor, **filters)
            yield from page.messages
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_message(
        self, message_id: str, *, attachment_content: bool = True
    ) -> node_pb2.MessageDetail:
        """The message: summary, notice, receipt and timeline (the read is audited).

        With ``attachment_content=False`` every attachment's content is left empty
        (name, media type and SHA-256 stay; ``attachment_sizes`` gives the sizes):
        fetch the bytes with ``get_attachment`` or ``save_attachments``. Raises
        ``NotFound``, or ``PermissionDenied`` for an identity that may not read it.
        """
        request = _common.message_request(message_id, attachment_content)
        return self._call(self._stub.GetMessage, request)

    def get_attachment(self, message_id: str, number: int) -> AttachmentStream:
        """Attachment ``number`` (from 1) of a message, as the node streams it: its
        description now, its bytes when iterated (checked at the end, see
        ``AttachmentStream``). Raises ``NotFound`` if there is no such attachment."""
        request = node_pb2.GetAttachmentRequest(message_id=message_id, index=number)
        call = self._stub.GetAttachment(request, timeout=self._timeout)
        try:
            first = next(iter(call))
        except grpc.RpcError as error:
            call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
            raise translate(error, self._target) from None
        except StopIteration:
            raise ClientError(f"the node sent nothing of attachment {number}") from None
        return AttachmentStream(number, _common.attachment_info(first), first.data, call)

    def save_attachment(self, message_id: str, number: int, folder: str | Path) -> Path:
        """Stream attachment ``number`` (from 1) into a new file in ``folder``; its path.

        The bytes go to a temporary file first; only when their size and SHA-256
        match is it named (``safe_file_name``; ``name (2).ext`` when taken: nothing
        is overwritten). Raises ``AttachmentError`` (then nothing is left) or
        ``NotFound``.
        """
        with (
            self.get_attachment(message_id, number) as stream,
            AttachmentFile(folder, number, stream.info) as file,
        ):
            for data in stream.unchecked():
                file.write(data)
            return file.finish()

    def save_attachments(
        self, message_id: str, folder: str | Path, *, only: int | None = None
    ) -> list[Path]:
        """Stream a notice's attachments (or attachment ``only``, from 1) into ``folder``
        as ``save_attachment`` does each; the paths written, in order.

        Raises ``AttachmentError``; its ``written`` lists the files saved before.
        """
        detail = self.get_message(message_id, attachment_content=False)
        written: list[Path] = []
        for number in _common.attachment_numbers(detail, only):
            try:
                written.append(self.save_attachment(message_id, number, folder))
            except AttachmentError as error:
                raise AttachmentError(
                    str(error), number=error.number, written=tuple(written)
                ) from None
        return written

    def get_status(self, message_id: str, *, wait_seconds: int = 0) -> node_pb2.MessageStatus:
        """State and timeline; with ``wait_seconds``, first wait for a final state
        (``MessageState(status.state)`` reads the state). Raises ``NotFound``."""
        request = node_pb2.GetStatusRequest(message_id=message_id, wait_seconds=wait_seconds)
        return self._call(self._stub.GetStatus, request, timeout=self._timeout + wait_seconds)

    def _send(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, node_pb2.SendNoticeResponse],
        request: Req,
        retries: int,
        timeout: float,
    ) -> SendResult:
        """Call ``method`` with ``request`` (which carries its idempotency key), retrying
        up to ``retries`` times when the node is unreachable or slow."""
        attempt = 0
        while True:
            try:
                return _common.send_result(self._call(method, request, timeout=timeout))
            except NodeUnavailable:
                if attempt >= retries:
                    raise
            time.sleep(_common.backoff_seconds(attempt))
            attempt += 1

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None = None,
    ) -> Resp:
        try:
            return method(request, timeout=timeout or self._timeout)
        except grpc.RpcError as error:
            raise translate(error, self._target) from None


class AttachmentStream:
    """One attachment's bytes as the node streams them (``LiaisonClient.get_attachment``).

    ``info`` describes it (name, media type, size, SHA-256). Iterating yields its
    chunks (at most 1 MiB each) and, after the last, checks their size and SHA-256
    against ``info``: ``AttachmentError`` if they differ, so only a consumer that
    reached the end without an error holds the attachment. ``read()`` gives it
    whole. ``close()``, or leaving a ``with`` block, stops the download.
    """

    def __init__(
        self,
        number: int,
        info: AttachmentInfo,
        first: bytes,
        call: grpc.CallIterator[node_pb2.AttachmentChunk],
    ) -> None:
        self.number = number
        self.info = info
        self._first = first
        self._call = call

    def __enter__(self) -> AttachmentStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        check = _common.ChunkCheck(self.number, self.info)
        for data in self.unchecked():
            yield check.add(data)
        check.verify()

    def read(self) -> bytes:
        """The whole attachment, checked; ``AttachmentError`` if it does not match."""
        return b"".join(self)

    def unchecked(self) -> Iterator[bytes]:
        """The chunks as they come, for a consumer that checks them itself."""
        yield self._first
        try:
            for chunk in self._call:
                yield chunk.data
        except grpc.RpcError as error:
            raise translate(error) from None

    def close(self) -> None:
        """Stop the download (nothing happens once it is complete)."""
        self._call.cancel()  # type: ignore[no-untyped-call]  # untyped in grpc-stubs
