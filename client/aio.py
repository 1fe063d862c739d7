"""``AsyncLiaisonClient``: ``LiaisonClient`` for asyncio code, over ``grpc.aio``.

The same methods, arguments, results and errors as ``LiaisonClient``; every call is
awaited, and ``iter_messages`` and ``watch`` are async iterators.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from liaison.client import _common
from liaison.client._common import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_ANSWER_BYTES,
    SEND_RETRIES,
    translate,
)
from liaison.client.attachments import AttachmentError, AttachmentFile
from liaison.client.errors import ClientError, NodeUnavailable
from liaison.client.types import AckStatus, AttachmentInfo, Direction, MessagePage, SendResult
from liaison.keys.credentials import ClientCredential
from liaison.keys.sealed import Passphrase
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2

__all__ = ["AsyncAttachmentStream", "AsyncLiaisonClient"]

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class AsyncLiaisonClient:
    """A connection to one node's local API over mutual TLS, for asyncio.

    Make it inside the event loop that uses it::

        async with AsyncLiaisonClient.from_home("~/.liaison", "case-system") as client:
            sent = await client.send_notice("DE.BPOL.LO-RABAT", notice)
            async for event in client.watch(events=["received"]):
                detail = await client.get_message(event.message_id)

    Each method does what the ``LiaisonClient`` method of its name does, with the
    same guarantees (sends retried with their idempotency key, a watch resumed
    after the last event) and the same ``ClientError`` subclasses.
    """

    def __init__(
        self,
        credential: ClientCredential,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        """As ``LiaisonClient``; the channel belongs to the running event loop."""
        self._channel = grpc.aio.secure_channel(
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
    ) -> AsyncLiaisonClient:
        """As ``LiaisonClient.from_credential_dir``."""
        return cls(_common.credential_from_dir(folder, passphrase), timeout=timeout)

    @classmethod
    def from_home(
        cls,
        home: str | Path,
        identity: str = "admin",
        passphrase: Passphrase | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> AsyncLiaisonClient:
        """As ``LiaisonClient.from_home``."""
        credential, most = _common.credential_from_home(home, identity, passphrase)
        return cls(credential, timeout=timeout, max_answer_bytes=most)

    async def __aenter__(self) -> AsyncLiaisonClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls in progress are cancelled."""
        await self._channel.close(None)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until the node's local API accepts connections; ``NodeUnavailable`` if not."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise NodeUnavailable(f"the node's local API did not come up in {timeout:g}s") from None

    async def send_notice(
        self,
        recipient: str | Sequence[str],
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        wait_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """As ``LiaisonClient.send_notice``: retried with one idempotency key, one copy."""
        request = _common.send_request(
            recipient, notice, ttl_seconds, wait_seconds, idempotency_key
        )
        return await self._send(
            self._stub.SendNotice, request, retries, self._timeout + wait_seconds
        )

    async def acknowledge(
        self,
        message_id: str,
        status: AckStatus | str | int,
        *,
        comment: str = "",
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """As ``LiaisonClient.acknowledge``."""
        request = _common.acknowledge_request(message_id, status, comment, idempotency_key)
        return await self._send(self._stub.Acknowledge, request, retries, self._timeout)

    async def reply(
        self,
        message_id: str,
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """As ``LiaisonClient.reply``."""
        request = _common.reply_request(message_id, notice, ttl_seconds, idempotency_key)
        return await self._send(self._stub.Reply, request, retries, self._timeout)

    async def forward(
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
        """As ``LiaisonClient.forward``."""
        request = _common.forward_request(
            message_id,
            to,
            readers=readers,
            comment=comment,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key,
        )
        return await self._send(self._stub.Forward, request, retries, self._timeout)

    async def watch(
        self, after: int = 0, *, events: Sequence[str] = (), reconnect: bool = True
    ) -> AsyncIterator[node_pb2.WatchEvent]:
        """As ``LiaisonClient.watch``: resumes after the last event when the node comes back."""
        attempt = 0
        while True:
            request = node_pb2.WatchRequest(after=after, events=list(events))
            try:
                async for event in self._stub.Watch(request):
                    after = event.seq
                    attempt = 0
                    yield event
                return
            except grpc.RpcError as error:
                translated = translate(error, self._target)
                if not reconnect or not isinstance(translated, NodeUnavailable):
                    raise translated from None
            await asyncio.sleep(_common.backoff_seconds(attempt))
            attempt += 1

    async def cancel(self, message_id: str) -> SendResult:
        """As ``LiaisonClient.cancel``."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return _common.send_result(await self._call(self._stub.Cancel, request))

    async def retry(self, message_id: str) -> SendResult:
        """As ``LiaisonClient.retry``."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return _common.send_result(await self._call(self._stub.Retry, request))

    async def sign_checkpoint(self) -> node_pb2.CheckpointResponse:
        """As ``LiaisonClient.sign_checkpoint``."""
        return await self._call(self._stub.SignCheckpoint, node_pb2.SignCheckpointRequest())

    async def audit_events(
        self, *, after: int = 0, page_size: int = 0, **filters: Any
    ) -> AsyncIterator[node_pb2.AuditRecord]:
        """As ``LiaisonClient.audit_events``."""
        while True:
            request = node_pb2.ListAuditEventsRequest(after=after, limit=page_size, **filters)
            page = await self._call(self._stub.ListAuditEvents, request)
            for event in page.events:
                yield event
            if not page.more or not page.events:
                return
            after = page.events[-1].seq

    async def thread(self, message_id: str) -> list[node_pb2.MessageSummary]:
        """As ``LiaisonClient.thread``."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return list((await self._call(self._stub.GetThread, request)).messages)

    async def list_messages(
        self, direction: Direction | int = Direction.UNSPECIFIED, limit: int = 0, **filters: Any
    ) -> list[node_pb2.MessageSummary]:
        """As ``LiaisonClient.list_messages``."""
        return (await self.list_page(direction, limit, **filters)).messages

    async def list_page(
        self,
        direction: Direction | int = Direction.UNSPECIFIED,
        limit: int = 0,
        *,
        cursor: str = "",
        **filters: Any,
    ) -> MessagePage:
        """As ``LiaisonClient.list_page``."""
        request = _common.list_request(direction, limit, cursor, filters)
        response = await self._call(self._stub.ListMessages, request)
        return MessagePage(list(response.messages), response.next_cursor)

    async def iter_messages(
        self,
        direction: Direction | int = Direction.UNSPECIFIED,
        *,
        page_size: int = 0,
        **filters: Any,
    ) -> AsyncIterator[node_pb2.MessageSummary]:
        """As ``LiaisonClient.iter_messages``, an async iterator."""
        cursor = ""
        while True:
            page = await self.list_page(direction, page_size, cursor=cursor, **filters)
            for summary in page.messages:
                yield summary
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def get_message(
        self, message_id: str, *, attachment_content: bool = True
    ) -> node_pb2.MessageDetail:
        """As ``LiaisonClient.get_message``."""
        request = _common.message_request(message_id, attachment_content)
        return await self._call(self._stub.GetMessage, request)

    async def get_attachment(self, message_id: str, number: int) -> AsyncAttachmentStream:
        """As ``LiaisonClient.get_attachment``; the stream is an async iterator."""
        request = node_pb2.GetAttachmentRequest(message_id=message_id, index=number)
        call = self._stub.GetAttachment(request, timeout=self._timeout)
        try:
            first = await _read(call)
        except ClientError:
            call.cancel()
            raise
        if first is None:
            raise ClientError(f"the node sent nothing of attachment {number}")
        return AsyncAttachmentStream(number, _common.attachment_info(first), first.data, call)

    async def save_attachment(self, message_id: str, number: int, folder: str | Path) -> Path:
        """As ``LiaisonClient.save_attachment``."""
        stream = await self.get_attachment(message_id, number)
        with stream, AttachmentFile(folder, number, stream.info) as file:
            async for data in stream.unchecked():
                file.write(data)
            return await asyncio.to_thread(file.finish)

    async def save_attachments(
        self, message_id: str, folder: str | Path, *, only: int | None = None
    ) -> list[Path]:
        """As ``LiaisonClient.save_attachments``."""
        detail = await self.get_message(message_id, attachment_content=False)
        written: list[Path] = []
        for number in _common.attachment_numbers(detail, only):
            try:
                written.append(await self.save_attachment(message_id, number, folder))
            except AttachmentError as error:
                raise AttachmentError(
                    str(error), number=error.number, written=tuple(written)
                ) from None
        return written

    async def get_status(self, message_id: str, *, wait_seconds: int = 0) -> node_pb2.MessageStatus:
        """As ``LiaisonClient.get_status``."""
        request = node_pb2.GetStatusRequest(message_id=message_id, wait_seconds=wait_seconds)
        return await self._call(self._stub.GetStatus, request, timeout=self._timeout + wait_seconds)

    async def _send(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, node_pb2.SendNoticeResponse],
        request: Req,
        retries: int,
        timeout: float,
    ) -> SendResult:
        attempt = 0
        while True:
            try:
                return _common.send_result(await self._call(method, request, timeout=timeout))
            except NodeUnavailable:
                if attempt >= retries:
                    raise
            await asyncio.sleep(_common.backoff_seconds(attempt))
            attempt += 1

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None = None,
    ) -> Resp:
        try:
            return await method(request, timeout=timeout or self._timeout)
        except grpc.RpcError as error:
            raise translate(error, self._target) from None


class AsyncAttachmentStream:
    """``AttachmentStream`` for asyncio: ``async for`` yields the checked chunks."""

    def __init__(
        self,
        number: int,
        info: AttachmentInfo,
        first: bytes,
        call: grpc.aio.UnaryStreamCall[node_pb2.GetAttachmentRequest, node_pb2.AttachmentChunk],
    ) -> None:
        self.number = number
        self.info = info
        self._first = first
        self._call = call

    def __enter__(self) -> AsyncAttachmentStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        check = _common.ChunkCheck(self.number, self.info)
        async for data in self.unchecked():
            yield check.add(data)
        check.verify()

    async def read(self) -> bytes:
        """The whole attachment, checked; ``AttachmentError`` if it does not match."""
        return b"".join([data async for data in self])

    async def unchecked(self) -> AsyncIterator[bytes]:
        """The chunks as they come, for a consumer that checks them itself."""
        yield self._first
        while (chunk := await _read(self._call)) is not None:
            yield chunk.data

    def close(self) -> None:
        """Stop the download (nothing happens once it is complete)."""
        self._call.cancel()


async def _read(
    call: grpc.aio.UnaryStreamCall[node_pb2.GetAttachmentRequest, node_pb2.AttachmentChunk],
) -> node_pb2.AttachmentChunk | None:
    """The next chunk of ``call``; None at its end."""
    try:
        chunk = await call.read()
    except grpc.RpcError as error:
        raise translate(error) from None
    return chunk if isinstance(chunk, node_pb2.AttachmentChunk) else None
